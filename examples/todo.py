"""A to-do list kept in an amphora database (an SQLite file, the embedded default).

    python examples/todo.py                  # create the list (once) and show it
    python examples/todo.py add "Buy milk"   # add a task
    python examples/todo.py done 2           # mark task 2 done

The database is ``var/todo.db`` (or the URI in ``$TODO_DB``). Running it again changes
nothing that is already there: the starter tasks are added only if missing.
"""
from __future__ import annotations

import os
import sys

import amphora
from todo_model import TodoList

STARTER_TASKS = ["Read the amphora README", "Run the example", "Write a persistent class"]


def main(argv: list[str]) -> int:
    uri = os.environ.get("TODO_DB", "sqlite:///var/todo.db")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///"):].split("?")[0]) or ".",
                    exist_ok=True)
    with amphora.open(uri) as db:
        with db.transaction("set up the to-do list") as conn:
            if "todo" not in conn.root():
                conn.root.todo = TodoList()
                print(f"created a to-do list in {uri}")
            todo = conn.root.todo
            added = [todo.add(title) for title in STARTER_TASKS if todo.find(title) is None]
            for task in added:
                print(f"added task {task.number}: {task.title}")
            if not added:
                print(f"the starter tasks are already in {uri}; nothing added")

        if argv[:1] == ["add"] and len(argv) == 2:
            with db.transaction(f"add {argv[1]!r}") as conn:
                task = conn.root.todo.add(argv[1])
                print(f"added task {task.number}: {task.title}")
        elif argv[:1] == ["done"] and len(argv) == 2 and argv[1].isdigit():
            with db.transaction(f"done {argv[1]}") as conn:
                task = conn.root.todo.tasks.get(int(argv[1]))
                if task is None:
                    print(f"there is no task {argv[1]}", file=sys.stderr)
                    return 1
                task.done = True
                print(f"marked task {task.number} done: {task.title}")
        elif argv:
            print(__doc__.strip().splitlines()[0], file=sys.stderr)
            print("usage: todo.py [add TITLE | done NUMBER]", file=sys.stderr)
            return 2

        with db.transaction() as conn:
            tasks = list(conn.root.todo.tasks.values())
            print(f"{len(tasks)} tasks, {sum(t.done for t in tasks)} done:")
            for task in tasks:
                print(f"  [{'x' if task.done else ' '}] {task.number}. {task.title}")
        print(f"{db.object_count()} objects, last transaction "
              f"{db.last_transaction().hex()}; try: amphora info {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
