# Workflows: chain, group and chord (docs/workflows.md). Worker: rabbittask worker -A workflows:app
from typing import Any

from rabbittask import App, TaskError, chain, chord, group

app = App("pages")


# --8<-- [start:tasks]
@app.task(queue="pages")
def fetch(url: str) -> str:
    return f"<html>{url}</html>"


@app.task(queue="pages")
def parse(page: str) -> int:
    return len(page)


@app.task(queue="pages")
def store(size: int, bucket: str) -> str:
    return f"stored {size} in {bucket}"


@app.task(queue="pages")
def score(doc: str) -> int:
    if doc == "bad":
        raise ValueError(f"cannot score {doc!r}")
    return len(doc)


@app.task(queue="pages")
def rank(scores: list[Any]) -> list[Any]:
    return sorted(scores, key=str, reverse=True)


@app.task(queue="pages")
def alert(failures: list[dict[str, Any]]) -> str:
    return "failed: " + ", ".join(f"{f['index']} ({f['reason']})" for f in failures)


# --8<-- [end:tasks]

if __name__ == "__main__":
    # --8<-- [start:chain]
    # Each step gets the previous result first: store(parse(fetch("a.example")), "sizes")
    print(chain(fetch.s("a.example"), parse.s(), store.s("sizes")).call(timeout=60))
    print((fetch.s("b.example") | parse.s() | store.si(0, "fixed")).call(timeout=60))  # .si: ignores it
    handle = chain(fetch.s("c.example"), parse.s()).delay()  # ids known at once: <id>:0, <id>:1
    print(len(handle.steps))
    # --8<-- [end:chain]

    # --8<-- [start:group]
    docs = ["a", "bb", "ccc"]
    print(group(score.s(d) for d in docs).call(timeout=60))  # every result, in member order
    # --8<-- [end:group]

    # --8<-- [start:chord]
    print(chord((score.s(d) for d in docs), rank.s()).call(timeout=60))
    try:  # a member failed for good: on_error runs with the failures, rank does not
        chord([score.s("a"), score.s("bad")], rank.s(), on_error=alert.s()).call(timeout=60)
    except TaskError as e:
        print(e.type_name)
    print(chord([score.s("a"), score.s("bad")], rank.s(), allow_failures=True).call(timeout=60)[0]["reason"])
    # --8<-- [end:chord]
