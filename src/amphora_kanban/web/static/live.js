// The board's live stream: Server-Sent Events of deltas from the board's generation on.
// EventSource reconnects by itself after a dropped connection (sending Last-Event-ID, so
// nothing is missed); when the server refuses the stream (closed), a new one is opened
// after a pause, from the generation the page has reached.

const RETRY_MS = 3000;

// url(): the stream's URL for the page's current generation; delta(d): apply one delta;
// status(s): "connecting" | "live" | "offline" | "paused" (stopped on purpose);
// refused(): told when the server refused the stream (e.g. the session ended).
export function liveStream({ url, delta, status, refused }) {
  let source = null;
  let retry = null;

  function open() {
    status("connecting");
    source = new EventSource(url());
    source.addEventListener("open", () => status("live"));
    source.addEventListener("board", (event) => {
      status("live");
      delta(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        status("offline");
        source = null;
        refused();
        retry = setTimeout(() => {
          retry = null;
          open();
        }, RETRY_MS);
      } else {
        status("connecting");
      }
    });
  }

  return {
    start() {
      if (!source && retry === null) open();
    },
    stop() {
      clearTimeout(retry);
      retry = null;
      if (source) source.close();
      source = null;
      status("paused");
    },
  };
}
