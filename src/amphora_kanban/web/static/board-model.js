// The board as this page knows it: the server's states and cards, kept current by
// applying the deltas of the live stream, and the moves this page sent that the server
// has not answered yet. Such a move shows at once (the card drawn where it was dropped);
// the server's answer then settles it: the card as the server has it, where it put it
// or back where it was.

export class BoardModel {
  constructor(name) {
    this.name = name;
    this.title = name;
    this.generation = 0;
    this.created = null;
    this.at = null;
    this.states = [];
    this.cards = new Map(); // id -> card, as the server last said
    this.pending = new Map(); // id -> {state, parent, before, ticket}: moves under way
    this.answered = new Map(); // id -> the generation of the server's last answer on it
    this.tickets = 0;
  }

  // Replaces everything with a board as GET /api/boards/NAME returns it.
  load(board) {
    this.title = board.title || this.title;
    this.created = board.created || this.created;
    this.at = board.at || null;
    this.generation = board.generation;
    this.states = board.states;
    this.cards = new Map(board.cards.map((card) => [card.id, card]));
    this.answered.clear();
  }

  // Applies one delta {generation, full, states, cards, removed} of the live stream.
  // Returns false when the delta adds a state whose place the delta cannot tell (the
  // caller then fetches the whole board), true otherwise.
  apply(delta) {
    if (delta.full) {
      this.generation = delta.generation;
      this.states = delta.states;
      this.cards = new Map(delta.cards.map((card) => [card.id, card]));
      this.answered.clear();
      return true;
    }
    if (delta.generation <= this.generation) return true;
    const removed = new Set(delta.removed);
    const remaining = this.states.filter((state) => !removed.has(state.id));
    const changed = new Map(delta.states.map((state) => [state.id, state]));
    // A delta lists the states it touched in board order: when it touched all of them
    // (as saving the board's states does), it is the board's whole list, new ones too.
    const whole = delta.states.length > 0 && remaining.every((state) => changed.has(state.id));
    const known = new Set(remaining.map((state) => state.id));
    if (!whole && delta.states.some((state) => !known.has(state.id))) return false;
    this.states = whole ? delta.states : remaining.map((state) => changed.get(state.id) || state);
    for (const card of delta.cards) {
      // A delta no newer than this page's own answer on the card shows it as it was.
      if ((this.answered.get(card.id) ?? -1) < delta.generation) this.cards.set(card.id, card);
    }
    for (const id of removed) this.cards.delete(id);
    this.generation = delta.generation;
    for (const [id, generation] of this.answered) {
      if (generation <= this.generation) this.answered.delete(id);
    }
    return true;
  }

  // A card as the server answered it to a change (fields beyond a card's are dropped).
  put(answer) {
    const { warnings, generation, history, comments, ...card } = answer;
    this.cards.set(card.id, { ...this.cards.get(card.id), ...card });
    if (typeof generation === "number") this.answered.set(card.id, generation);
  }

  // Shows card `id` in `state` under `parent`, in front of card `before` (null: last),
  // until settle(id, ticket) with the ticket returned.
  moveLocally(id, state, parent, before) {
    const ticket = ++this.tickets;
    this.pending.set(id, { state, parent, before, ticket });
    return ticket;
  }

  // The move with `ticket` is answered: the card is shown as the server has it (unless
  // a later move of it is under way).
  settle(id, ticket) {
    if (this.pending.get(id)?.ticket === ticket) this.pending.delete(id);
  }

  // A card as the page shows it: where a move under way takes it.
  card(id) {
    const card = this.cards.get(id);
    return card ? this.shown(card) : null;
  }

  shown(card) {
    const move = this.pending.get(card.id);
    return move ? { ...card, state: move.state, parent: move.parent } : card;
  }

  all() {
    return [...this.cards.values()].map((card) => this.shown(card));
  }

  state(id) {
    return this.states.find((state) => state.id === id) || null;
  }

  featureStates() {
    return this.states.filter((state) => !state.task);
  }

  taskStates() {
    return this.states.filter((state) => state.task);
  }

  // The cards of one column: in state `stateId` under `parent` (null: features), in order;
  // a card being moved is in front of the card it was dropped before.
  column(stateId, parent = null) {
    const cards = this.all().filter((card) => card.state === stateId && (card.parent || null) === parent);
    const column = cards.filter((card) => !this.pending.has(card.id)).sort(byPosition);
    for (const card of cards.filter((c) => this.pending.has(c.id))) {
      const at = column.findIndex((c) => c.id === this.pending.get(card.id).before);
      column.splice(at < 0 ? column.length : at, 0, card);
    }
    return column;
  }

  tasks(featureId) {
    return this.all().filter((card) => card.parent === featureId).sort(byPosition);
  }

  // {complete, total} points of a feature's tasks (as the server's `progress`, but kept
  // current as tasks move, since a delta carries only the cards it touched).
  progress(featureId) {
    let complete = 0;
    let total = 0;
    for (const task of this.tasks(featureId)) {
      total += task.size;
      if (this.state(task.state)?.complete) complete += task.size;
    }
    return { complete, total };
  }

  // What counts against a state's WIP limit: all its cards on the board, in its unit.
  wipLoad(state) {
    let cards = 0;
    let points = 0;
    for (const card of this.all()) {
      if (card.state === state.id) {
        cards += 1;
        points += card.size;
      }
    }
    const used = state.wip ? (state.wip.unit === "points" ? points : cards) : cards;
    return { cards, points, used, over: Boolean(state.wip) && used > state.wip.limit };
  }
}

function byPosition(a, b) {
  if (a.position !== b.position) return a.position < b.position ? -1 : 1;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

// "Title [3]" -> {title: "Title", size: 3}; without a size, size is undefined.
export function parseQuickAdd(text) {
  const match = /^(.*?)\s*\[\s*(\d{1,4})\s*\]\s*$/.exec(text);
  if (match && match[1].trim()) return { title: match[1].trim(), size: Number(match[2]) };
  return { title: text.trim(), size: undefined };
}

// The board's filters: text (in title or description), assignee ("" anyone, "-" nobody,
// else a user id) and state ("" any). A feature shows when it or one of its tasks
// matches; a task when it or its feature matches.
export class Filters {
  constructor() {
    this.text = "";
    this.assignee = "";
    this.state = "";
  }

  get active() {
    return Boolean(this.text || this.assignee || this.state);
  }

  matches(card) {
    if (this.text) {
      const words = `${card.title} ${(card.description || "").replace(/<[^>]*>/g, " ")}`;
      if (!words.toLowerCase().includes(this.text.toLowerCase())) return false;
    }
    if (this.assignee === "-" ? card.assignee : this.assignee && card.assignee !== this.assignee) {
      return false;
    }
    return !this.state || card.state === this.state;
  }

  showsFeature(model, feature) {
    return !this.active || this.matches(feature)
      || model.tasks(feature.id).some((task) => this.matches(task));
  }

  showsTask(model, task) {
    const feature = model.card(task.parent);
    return !this.active || this.matches(task) || (feature && this.matches(feature));
  }
}
