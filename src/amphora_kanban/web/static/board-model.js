// The board as this page knows it: the server's states and cards, kept current by
// applying the deltas of the live stream. The server is the authority: nothing here
// changes a card except the server's answers and deltas.

export class BoardModel {
  constructor(name) {
    this.name = name;
    this.title = name;
    this.generation = 0;
    this.created = null;
    this.at = null;
    this.states = [];
    this.cards = new Map();
  }

  // Replaces everything with a board as GET /api/boards/NAME returns it.
  load(board) {
    this.title = board.title || this.title;
    this.created = board.created || this.created;
    this.at = board.at || null;
    this.generation = board.generation;
    this.states = board.states;
    this.cards = new Map(board.cards.map((card) => [card.id, card]));
  }

  // Applies one delta {generation, full, states, cards, removed} of the live stream.
  // Returns false when the delta adds a state whose place the delta cannot tell (the
  // caller then fetches the whole board), true otherwise.
  apply(delta) {
    if (delta.full) {
      this.generation = delta.generation;
      this.states = delta.states;
      this.cards = new Map(delta.cards.map((card) => [card.id, card]));
      return true;
    }
    if (delta.generation <= this.generation) return true;
    const known = new Set(this.states.map((state) => state.id));
    if (delta.states.some((state) => !known.has(state.id))) return false;
    const removed = new Set(delta.removed);
    const remaining = this.states.filter((state) => !removed.has(state.id));
    const changed = new Map(delta.states.map((state) => [state.id, state]));
    // A delta lists its states in board order: when it touches all of them (as a
    // reordering does), its order is the board's.
    this.states = remaining.length && remaining.every((state) => changed.has(state.id))
      ? delta.states : remaining.map((state) => changed.get(state.id) || state);
    for (const card of delta.cards) this.cards.set(card.id, card);
    for (const id of removed) this.cards.delete(id);
    this.generation = delta.generation;
    return true;
  }

  // A card as the server answered it to a change (fields beyond a card's are dropped).
  put(answer) {
    const { warnings, generation, history, comments, ...card } = answer;
    this.cards.set(card.id, { ...this.cards.get(card.id), ...card });
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

  // The cards of one column: in state `stateId` under `parent` (null: features), in order.
  column(stateId, parent = null) {
    return [...this.cards.values()]
      .filter((card) => card.state === stateId && (card.parent || null) === parent)
      .sort(byPosition);
  }

  tasks(featureId) {
    return [...this.cards.values()].filter((card) => card.parent === featureId).sort(byPosition);
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
    for (const card of this.cards.values()) {
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
    const feature = model.cards.get(task.parent);
    return !this.active || this.matches(task) || (feature && this.matches(feature));
  }
}
