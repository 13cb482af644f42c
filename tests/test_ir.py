"""Unit tests of the dependency-graph IR: appends, the verifier, the dump, JSON and lowering."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pastac.grammar import check, parse
from pastac.ir.graph import (
    MAIN,
    Close,
    EdgeKind,
    Fork,
    IRError,
    Join,
    Open,
    Segment,
    SyncTag,
    ThreadGraph,
    verify,
)
from pastac.ir.lengths import by_name, chars, tokenizer_length, words
from pastac.ir.lower import lower
from pastac.ir.printer import dump, dumps_json, from_json, to_json

# One sleep tip, a sync, a conclusion: the smallest document with a thread.
TIP = 'Tips: <promise topic="sleep" tokens="3"/><async>Sleep well.</async><sync/> Done.'
TIP_DUMP = """\
thread t0 depth=0
thread t1 depth=1 parent=t0 fork=%1 topic="sleep"
%0 = t0 segment len=1 "Tips: "
%1 = t0 fork t1 len=3 topic="sleep" predicted=3
%2 = t1 open len=1
%3 = t1 segment len=2 "Sleep well."
%4 = t1 close len=1
%5 = t0 sync len=1
%6 = t0 join t1
%7 = t0 segment len=1 " Done."
"""

# Two levels: t1 promises t2 and ends without a sync (its end joins t2); t3 is joined by the main <sync/>.
NESTED = (
    'A <promise topic="x" tokens="2"/><async>B <promise topic="y"/><async>C</async> D</async>'
    ' E<promise topic="z" tokens="1"/><async>F</async><sync/> G'
)


def edges_of(graph: ThreadGraph) -> set[tuple[int, int, str]]:
    return {(u, v, str(d["kind"])) for u, v, d in graph.g.edges(data=True)}


def tip_graph() -> ThreadGraph:
    return lower(parse(TIP), words)


def nested_graph() -> ThreadGraph:
    return lower(parse(NESTED), words)


# ------------------------------------------------------------------ lengths


def test_length_functions() -> None:
    assert chars("a b\n") == 4
    assert words("a b\n") == 2
    assert words("  ") == 0
    assert words('<promise topic="a b"/>') == 3  # white space inside the tag splits it too
    assert by_name("chars") is chars and by_name("words") is words
    with pytest.raises(ValueError, match="unknown length function 'bytes'; choose from chars, words"):
        by_name("bytes")

    class Tokenizer:
        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return [ord(c) for c in text] + ([0] if add_special_tokens else [])  # [0]: a BOS

    length = tokenizer_length(Tokenizer())
    assert length("abc") == 3
    assert length("") == 0


# ------------------------------------------------------------------ appends


def test_incremental_growth_as_the_runtime_appends() -> None:
    """The runtime appends nodes in the order it decodes them: interleaved across threads."""
    g = ThreadGraph()
    assert g.threads[MAIN].parent is None and g.threads[MAIN].depth == 0
    assert len(g) == 0 and g.tokens() == 0 and not g.ended(MAIN)

    s0 = g.segment(MAIN, "List: ", 2)
    f1, t1 = g.fork(MAIN, "one", 2, '<promise topic="one" tokens="2"/>', 3)
    assert (s0, f1, t1) == (0, 1, 1)
    assert g.threads[t1].parent == MAIN and g.threads[t1].depth == 1
    assert g.threads[t1].fork == f1 and g.threads[t1].topic == "one"
    assert g.unjoined(MAIN) == (t1,) and g.children(MAIN) == (t1,)
    verify(g, complete=False)  # t1 has no node yet: that is allowed while it grows
    with pytest.raises(IRError, match="thread t1 is never joined"):
        verify(g)

    s2 = g.segment(MAIN, " and ", 1)  # the parent goes on at once
    o3 = g.open(t1, "<async>", 1)  # the child's first node: after %2 in id order
    f4, t2 = g.fork(MAIN, "two", None, '<promise topic="two"/>', 2)
    o5 = g.open(t2, "<async>", 1)
    s6 = g.segment(t1, "first", 1)
    f7, t3 = g.fork(t1, "inner", 1, '<promise topic="inner" tokens="1"/>', 3)  # a grandchild
    assert g.threads[t3].depth == 2 and g.threads[t3].parent == t1
    o8 = g.open(t3, "<async>", 1)
    s9 = g.segment(t2, "second", 1)
    y10 = g.sync(MAIN, "<sync/>", 1)
    c11 = g.close(t2, "</async>", 1)
    g.end(t2)  # no children: no join node
    assert g.ended(t2) and len(g) == 12
    with pytest.raises(IRError, match="t0 cannot join t1: it has not ended"):
        g.join(MAIN, explicit=True)
    c12 = g.close(t1, "</async>", 1)
    with pytest.raises(IRError, match="t1 cannot join t3: it has not ended"):
        g.end(t1)
    assert not g.ended(t1)
    s13 = g.segment(t3, "deep", 1)
    c14 = g.close(t3, "</async>", 1)
    g.end(t3)
    g.end(t1)  # appends t1's implicit join of t3
    j15 = 15
    assert g.op(j15) == Join(t1, (t3,), explicit=False)
    j16 = g.join(MAIN, explicit=True)
    assert j16 == 16 and g.op(j16) == Join(MAIN, (t1, t2), explicit=True)
    assert g.unjoined(MAIN) == ()
    assert g.join(MAIN, explicit=True) is None  # nothing left to join: no node
    s17 = g.segment(MAIN, " end", 1)
    verify(g, complete=False)
    with pytest.raises(IRError, match="thread t0 has not ended"):
        verify(g)
    g.end(MAIN)
    verify(g, max_depth=2)
    with pytest.raises(IRError, match="depth 2; the limit is 1"):
        verify(g, max_depth=1)

    assert g.thread_nodes(MAIN) == (s0, f1, s2, f4, y10, j16, s17)
    assert g.thread_nodes(t1) == (o3, s6, f7, c12, j15)
    assert g.thread_nodes(t2) == (o5, s9, c11)
    assert g.thread_nodes(t3) == (o8, s13, c14)
    assert g.children(MAIN) == (t1, t2) and g.children(t1) == (t3,)
    assert g.ends == [(t2, 12), (t3, 15), (t1, 16), (MAIN, 18)]
    assert g.tokens() == 2 + 3 + 1 + 1 + 2 + 1 + 1 + 3 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1
    assert edges_of(g) == {
        (0, 1, "seq"),
        (1, 2, "seq"),
        (2, 4, "seq"),
        (4, 10, "seq"),
        (10, 16, "seq"),
        (16, 17, "seq"),
        (1, 3, "fork"),
        (3, 6, "seq"),
        (6, 7, "seq"),
        (7, 12, "seq"),
        (12, 15, "seq"),
        (4, 5, "fork"),
        (5, 9, "seq"),
        (9, 11, "seq"),
        (7, 8, "fork"),
        (8, 13, "seq"),
        (13, 14, "seq"),
        (14, 15, "join"),
        (15, 16, "join"),
        (11, 16, "join"),
    }


def test_fork_child_ids_are_fresh_and_in_order() -> None:
    g = ThreadGraph()
    _, a = g.fork(MAIN, "a", None, "<p/>", 1)
    _, b = g.fork(MAIN, "b", None, "<p/>", 1)
    g.open(a, "<async>", 1)
    _, c = g.fork(a, "c", None, "<p/>", 1)
    assert (a, b, c) == (1, 2, 3)


def appended_tip() -> tuple[ThreadGraph, int]:
    g = ThreadGraph()
    g.segment(MAIN, "x", 1)
    _, child = g.fork(MAIN, "t", None, "<p/>", 1)
    return g, child


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda g, c: g.open(MAIN, "<async>", 1), r"<async> must start a forked thread \(t0\)"),
        (lambda g, c: (g.open(c, "<async>", 1), g.open(c, "<async>", 1)), r"must start a forked thread \(t1\)"),
        (lambda g, c: g.join(MAIN, explicit=True), "t0 cannot join t1: it has not ended"),
        (lambda g, c: g.end(MAIN), "t0 cannot join t1: it has not ended"),
        (lambda g, c: g.end(c), "thread t1 ends without content"),
        (lambda g, c: g.segment(MAIN, "x", -1), "negative length -1"),
        (lambda g, c: g.segment(7, "x", 1), "no thread t7"),
        (lambda g, c: g.fork(7, "t", None, "<p/>", 1), "no thread t7"),
        (lambda g, c: g.sync(7, "<sync/>", 1), "no thread t7"),
        (lambda g, c: g.close(7, "</async>", 1), "no thread t7"),
        (lambda g, c: g.open(7, "<async>", 1), "no thread t7"),
        (lambda g, c: g.join(7, explicit=True), "no thread t7"),
        (lambda g, c: g.end(7), "no thread t7"),
        # A forked thread starts with its <async>: nothing else may come first.
        (lambda g, c: g.segment(c, "x", 1), r"t1 must start with its <async>"),
        (lambda g, c: g.close(c, "</async>", 1), r"t1 must start with its <async>"),
        (lambda g, c: g.fork(c, "u", None, "<p/>", 1), r"t1 must start with its <async>"),
        (lambda g, c: g.sync(c, "<sync/>", 1), r"t1 must start with its <async>"),
        # </async> ends a forked thread's content: only its implicit join may follow.
        (lambda g, c: g.close(MAIN, "</async>", 1), r"</async> outside a forked thread \(t0\)"),
        (
            lambda g, c: (g.open(c, "<async>", 1), g.close(c, "</async>", 1), g.segment(c, "x", 1)),
            r"t1 has written its </async>",
        ),
        (
            lambda g, c: (g.open(c, "<async>", 1), g.close(c, "</async>", 1), g.close(c, "</async>", 1)),
            r"t1 has written its </async>",
        ),
    ],
    ids=[
        "open-main",
        "open-twice",
        "join-unended",
        "end-with-unended-child",
        "end-empty-child",
        "negative-length",
        "segment-unknown",
        "fork-unknown",
        "sync-unknown",
        "close-unknown",
        "open-unknown",
        "join-unknown",
        "end-unknown",
        "segment-before-open",
        "close-before-open",
        "fork-before-open",
        "sync-before-open",
        "close-main",
        "segment-after-close",
        "close-twice",
    ],
)
def test_append_errors(action, message: str) -> None:  # type: ignore[no-untyped-def]
    g, child = appended_tip()
    with pytest.raises(IRError, match=message):
        action(g, child)
    verify(g, complete=False)  # a refused append leaves a valid graph


def test_failed_appends_leave_the_graph_unchanged() -> None:
    g, child = appended_tip()
    before = (dump(g), edges_of(g), dict(g.threads), g.unjoined(MAIN))
    for action in (
        lambda: g.segment(child, "x", 1),
        lambda: g.fork(7, "t", None, "<p/>", 1),
        lambda: g.join(MAIN, explicit=True),
        lambda: g.segment(MAIN, "x", -1),
    ):
        with pytest.raises(IRError):
            action()
        assert (dump(g), edges_of(g), dict(g.threads), g.unjoined(MAIN)) == before


def test_ended_threads_take_no_more_appends() -> None:
    g, child = appended_tip()
    g.open(child, "<async>", 1)
    g.close(child, "</async>", 1)
    g.end(child)
    for action in (
        lambda: g.segment(child, "x", 1),
        lambda: g.close(child, "</async>", 1),
        lambda: g.sync(child, "<sync/>", 1),
        lambda: g.fork(child, "t", None, "<p/>", 1),
    ):
        with pytest.raises(IRError, match="thread t1 has ended"):
            action()
    with pytest.raises(IRError, match="thread t1 has ended"):
        g.end(child)  # a second end would record the thread's end twice
    assert g.ends == [(child, 4)]
    assert max(g.threads) == child  # the refused fork registered no thread
    g.end(MAIN)
    with pytest.raises(IRError, match="thread t0 has ended"):
        g.segment(MAIN, "late", 1)
    with pytest.raises(IRError, match="thread t0 has ended"):
        g.end(MAIN)
    verify(g)


def test_empty_document_and_empty_main_thread() -> None:
    g = lower(parse(""))
    assert len(g) == 0 and g.ends == [(MAIN, 0)]
    verify(g)
    assert dump(g) == "thread t0 depth=0\n"
    g = ThreadGraph()
    g.end(MAIN)  # the main thread may end without content; a child may not
    verify(g)


def test_sync_without_children_appends_no_join() -> None:
    g = ThreadGraph()
    g.sync(MAIN, "<sync/>", 1)
    assert g.join(MAIN, explicit=True) is None
    g.end(MAIN)
    verify(g)
    assert [type(op) for _, op in g.ops()] == [SyncTag]


# ------------------------------------------------------------------ verify


def test_lowered_documents_verify() -> None:
    verify(tip_graph())
    verify(nested_graph(), max_depth=2)
    with pytest.raises(IRError, match="thread t2 is at depth 2; the limit is 1"):
        verify(nested_graph(), max_depth=1)


def broken(edit) -> ThreadGraph:  # type: ignore[no-untyped-def]
    graph = nested_graph()
    verify(graph)
    edit(graph)
    return graph


def set_op(graph: ThreadGraph, node: int, op) -> None:  # type: ignore[no-untyped-def]
    graph.g.nodes[node]["op"] = op


# The nested graph, for the hand-broken variants below:
#   %0 t0 "A "  %1 t0 fork t1  %2 t1 open  %3 t1 "B "  %4 t1 fork t2  %5 t2 open  %6 t2 "C"  %7 t2 close
#   %8 t1 " D"  %9 t1 close  %10 t1 join t2 (end of body)  %11 t0 " E"  %12 t0 fork t3  %13 t3 open
#   %14 t3 "F"  %15 t3 close  %16 t0 sync  %17 t0 join t1, t3  %18 t0 " G"
BROKEN = [
    ("cycle", lambda g: g.g.add_edge(10, 3, kind=EdgeKind.SEQ), "the graph has a cycle"),
    ("backwards-edge", lambda g: g.g.add_edge(16, 14, kind=EdgeKind.JOIN), r"edge %16 -> %14 goes backwards"),
    ("no-seq-edge", lambda g: g.g.remove_edge(2, 3), r"%3 has no seq edge from its thread's previous node"),
    (
        "seq-edge-from-elsewhere",
        lambda g: (g.g.remove_edge(8, 9), g.g.add_edge(0, 9, kind=EdgeKind.SEQ)),
        r"%9 has no seq edge from its thread's previous node",
    ),
    ("no-fork-edge", lambda g: g.g.remove_edge(1, 2), r"%2 starts t1 but has no fork edge"),
    (
        "child-starts-with-text",
        lambda g: set_op(g, 13, Segment(3, "<async>", 1)),
        r"thread t3 starts with %13, not with its <async>",
    ),
    ("no-join-edge", lambda g: g.g.remove_edge(15, 17), r"%17 joins t3 without an edge from its last node %15"),
    ("joined-twice", lambda g: set_op(g, 17, Join(0, (1, 3, 1), True)), r"t1 is joined twice \(%17 and %17\)"),
    (
        "grandchild-joined-by-main",
        lambda g: (
            set_op(g, 10, Join(1, (), False)),
            g.g.remove_edge(7, 10),
            set_op(g, 17, Join(0, (1, 2, 3), True)),
            g.g.add_edge(7, 17, kind=EdgeKind.JOIN),
        ),
        r"%17 joins t2, which is not a child of t0",
    ),
    (
        "never-joined",
        lambda g: (set_op(g, 17, Join(0, (1,), True)), g.g.remove_edge(15, 17)),
        "thread t3 is never joined",
    ),
    ("unknown-thread", lambda g: set_op(g, 18, Segment(9, " G", 1)), r"%18 belongs to unknown thread t9"),
    (
        "wrong-depth",
        lambda g: g.threads.__setitem__(3, replace(g.threads[3], depth=2)),
        "thread t3 has a wrong parent or depth",
    ),
    (
        "wrong-parent",
        lambda g: g.threads.__setitem__(2, replace(g.threads[2], parent=0)),
        r"%4 forks t2, whose parent is t0, not t1",
    ),
    # The edges decide visibility, so the verifier must refuse any edge the threads do not explain.
    ("sibling-sees-sibling", lambda g: g.g.add_edge(6, 14, kind=EdgeKind.SEQ), r"unexpected seq edge %6 -> %14"),
    ("parent-sees-child-early", lambda g: g.g.add_edge(6, 11, kind=EdgeKind.JOIN), r"unexpected join edge %6 -> %11"),
    ("edge-kind-mislabelled", lambda g: g.g.add_edge(1, 2, kind=EdgeKind.SEQ), r"%2 starts t1 but has no fork edge"),
    ("node-in-another-thread", lambda g: set_op(g, 14, Segment(0, "F", 1)), r"%14 is not a node of t0"),
    (
        "fork-of-another-child",
        lambda g: set_op(g, 12, Fork(0, 1, "z", 1, "<p/>", 3)),
        r"%12 forks t1, but t1 was forked by %1",
    ),
    (
        "fork-is-no-fork",
        lambda g: set_op(g, 12, Segment(0, "<p/>", 1)),
        "thread t3 names %12 as its promise, which does not fork it",
    ),
    ("close-in-main", lambda g: set_op(g, 18, Close(0, " G", 1)), r"%18: </async> outside a forked thread"),
    ("open-in-the-middle", lambda g: set_op(g, 14, Open(3, "F", 1)), r"%14: <async> that does not start t3"),
]


@pytest.mark.parametrize(("edit", "message"), [(e, m) for _, e, m in BROKEN], ids=[name for name, _, _ in BROKEN])
def test_verify_catches(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IRError, match=message):
        verify(broken(edit))


def test_verify_incomplete_graphs() -> None:
    g = ThreadGraph()
    g.segment(MAIN, "x", 1)
    verify(g, complete=False)
    with pytest.raises(IRError, match="thread t0 has not ended"):
        verify(g)
    _, child = g.fork(MAIN, "t", None, "<p/>", 1)
    g.open(child, "<async>", 1)
    verify(g, complete=False)
    with pytest.raises(IRError, match="thread t1 is never joined"):
        verify(g)


# ------------------------------------------------------------------ dump and JSON


def test_dump_exact() -> None:
    assert dump(tip_graph()) == TIP_DUMP


def test_dump_nested_with_annotations_and_quoting() -> None:
    g = lower(parse('<promise topic="a &quot;b&quot;\n"/><async>x\ty</async>'), chars)
    assert dump(g, {0: "note zero", 3: "three"}) == (
        "thread t0 depth=0\n"
        'thread t1 depth=1 parent=t0 fork=%0 topic="a \\"b\\"\\n"\n'
        '%0 = t0 fork t1 len=35 topic="a \\"b\\"\\n"  ; note zero\n'
        "%1 = t1 open len=7\n"
        '%2 = t1 segment len=3 "x\\ty"\n'
        "%3 = t1 close len=8  ; three\n"
        "%4 = t0 join t1 (end of body)\n"
    )
    assert g.op(0).text == '<promise topic="a &quot;b&quot;\n"/>'  # the canonical tag text


def test_dump_nested() -> None:
    assert (
        dump(nested_graph())
        == """\
thread t0 depth=0
thread t1 depth=1 parent=t0 fork=%1 topic="x"
thread t2 depth=2 parent=t1 fork=%4 topic="y"
thread t3 depth=1 parent=t0 fork=%12 topic="z"
%0 = t0 segment len=1 "A "
%1 = t0 fork t1 len=3 topic="x" predicted=2
%2 = t1 open len=1
%3 = t1 segment len=1 "B "
%4 = t1 fork t2 len=2 topic="y"
%5 = t2 open len=1
%6 = t2 segment len=1 "C"
%7 = t2 close len=1
%8 = t1 segment len=1 " D"
%9 = t1 close len=1
%10 = t1 join t2 (end of body)
%11 = t0 segment len=1 " E"
%12 = t0 fork t3 len=3 topic="z" predicted=1
%13 = t3 open len=1
%14 = t3 segment len=1 "F"
%15 = t3 close len=1
%16 = t0 sync len=1
%17 = t0 join t1, t3
%18 = t0 segment len=1 " G"
"""
    )


def round_trip(graph: ThreadGraph) -> ThreadGraph:
    again = from_json(json.loads(json.dumps(to_json(graph))))
    verify(again)
    assert dump(again) == dump(graph)
    assert again.ends == graph.ends
    assert edges_of(again) == edges_of(graph)
    assert again.threads == graph.threads
    assert to_json(again) == to_json(graph)
    return again


@pytest.mark.parametrize("source", [TIP, NESTED, "", "plain text", '<async>orphan</async><promise topic="u"/>'])
def test_json_round_trip(source: str) -> None:
    round_trip(lower(check(source, mode="lenient").document, words))


def test_json_round_trip_of_an_interleaved_runtime_graph() -> None:
    g = ThreadGraph()
    _, a = g.fork(MAIN, "a", 1, "<p/>", 1)
    _, b = g.fork(MAIN, "b", None, "<p/>", 1)
    g.open(b, "<async>", 1)
    g.open(a, "<async>", 1)
    _, c = g.fork(a, "c", 2, "<p/>", 1)
    g.close(b, "</async>", 1)
    g.end(b)
    g.segment(MAIN, "m", 0)
    g.open(c, "<async>", 1)
    g.close(a, "</async>", 1)
    g.close(c, "</async>", 1)
    g.end(c)
    g.end(a)
    g.sync(MAIN, "<sync/>", 1)
    g.join(MAIN, explicit=True)
    g.end(MAIN)
    verify(g)
    again = round_trip(g)
    assert [type(op) for _, op in again.ops()][-3:] == [Join, SyncTag, Join]


def test_json_form() -> None:
    data = to_json(tip_graph())
    assert data["format"] == "pastac-ir" and data["version"] == 1
    assert data["nodes"][1] == {
        "kind": "fork",
        "thread": 0,
        "child": 1,
        "topic": "sleep",
        "predicted": 3,
        "text": '<promise topic="sleep" tokens="3"/>',
        "length": 3,
    }
    assert data["nodes"][6] == {"kind": "join", "thread": 0, "children": [1], "explicit": True, "length": 0, "text": ""}
    assert data["ends"] == [[1, 5], [0, 8]]
    assert json.loads(dumps_json(tip_graph())) == data


def test_huge_predicted_lengths_dump_and_round_trip() -> None:
    """Promise lengths have no upper bound (spec §3.1), also past Python's 4300-digit int/str limit."""
    digits = "9" * 5000
    g = lower(parse(f'<promise topic="t" tokens="{digits}"/><async>a</async>'), words)
    assert f"predicted={digits}\n" in dump(g)
    again = round_trip(g)
    fork = again.op(0)
    assert isinstance(fork, Fork) and fork.predicted == 10**5000 - 1
    assert json.loads(dumps_json(g))["nodes"][0]["predicted"] == digits  # a string where a number cannot be read


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=2), "not a pastac-ir version 1 document"),
        (lambda d: d["nodes"][0].update(kind="blob"), "unknown node kind 'blob'"),
        (lambda d: d["nodes"][1].update(child=5), "fork creates t1, the JSON says t5"),
        (lambda d: d["nodes"][6].update(children=[2]), r"join of t0 lists \[2\], expected \(1,\)"),
        (
            lambda d: d["nodes"].insert(3, {"kind": "segment", "thread": 0, "text": "x", "length": -2}),
            "negative length -2",
        ),
        (lambda d: d["ends"].append([0, 99]), "end of t0 refers past the last node"),
    ],
)
def test_from_json_refuses(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(to_json(tip_graph())))
    edit(data)
    with pytest.raises(IRError, match=message):
        from_json(data)


# ------------------------------------------------------------------ lowering


def test_lowering_assigns_canonical_tag_text() -> None:
    g = lower(parse('<promise  tokens="04"\n topic="t&amp;u" /><async topic="t&amp;u">x</async >'), chars)
    fork, opened, _, closed, join = (op for _, op in g.ops())
    assert fork == Fork(MAIN, 1, "t&u", 4, '<promise topic="t&amp;u" tokens="4"/>', 37)
    assert opened == Open(1, '<async topic="t&amp;u">', 23)
    assert closed == Close(1, "</async>", 8)
    assert join == Join(MAIN, (1,), explicit=False)


def test_lowering_a_lenient_document() -> None:
    """An orphan <async> lowers as its parent's text; an unfulfilled promise as a plain tag segment.

    The orphan's own body keeps its pairing: its promise forks t1, which the next <sync/> of the
    thread joins (the orphan's body is no thread, so its end joins nothing)."""
    source = (
        'a<async>orphan <promise topic="in"/><async>kept</async></async>'
        '<promise topic="never"/><sync/>b<promise topic="ok"/><async>c</async>'
    )
    result = check(source, mode="lenient")
    assert {d.code for d in result.diagnostics} == {"E303", "E304"}
    g = lower(result.document, words)
    verify(g, max_depth=2)
    assert (
        dump(g)
        == """\
thread t0 depth=0
thread t1 depth=1 parent=t0 fork=%2 topic="in"
thread t2 depth=1 parent=t0 fork=%10 topic="ok"
%0 = t0 segment len=1 "a"
%1 = t0 segment len=1 "orphan "
%2 = t0 fork t1 len=2 topic="in"
%3 = t1 open len=1
%4 = t1 segment len=1 "kept"
%5 = t1 close len=1
%6 = t0 segment len=2 "<promise topic=\\"never\\"/>"
%7 = t0 sync len=1
%8 = t0 join t1
%9 = t0 segment len=1 "b"
%10 = t0 fork t2 len=2 topic="ok"
%11 = t2 open len=1
%12 = t2 segment len=1 "c"
%13 = t2 close len=1
%14 = t0 join t2 (end of body)
"""
    )


def test_lowering_an_unclosed_block() -> None:
    result = check('<promise topic="t"/><async>never closed', mode="lenient")
    assert [d.code for d in result.diagnostics] == ["E301"]
    g = lower(result.document, words)
    verify(g)
    assert [type(op) for _, op in g.ops()] == [Fork, Open, Segment, Close, Join]  # closed where recovery closed it


@pytest.mark.parametrize("depth", [3, 1500])
def test_lowering_deep_lenient_nesting(depth: int) -> None:
    """Lenient mode accepts any depth (the parser does not recurse per level); nor may lowering."""
    nested = check('<promise topic="t"/><async>' * depth + "x" + "</async>" * depth, mode="lenient")
    g = lower(nested.document, words)
    verify(g, max_depth=depth)
    assert max(t.depth for t in g.threads.values()) == depth
    orphans = check("<async>" * depth + "x" + "</async>" * depth, mode="lenient")
    g = lower(orphans.document, words)
    verify(g)
    assert [type(op) for _, op in g.ops()] == [Segment]


class CountingThreads(dict):
    """A thread table that counts how many of its entries are walked (iterations and views)."""

    walked = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        for key in super().__iter__():
            CountingThreads.walked += 1
            yield key

    def values(self):  # type: ignore[no-untyped-def]
        return [self[key] for key in self]

    def items(self):  # type: ignore[no-untyped-def]
        return [(key, self[key]) for key in self]


def test_forks_and_children_do_not_walk_every_thread() -> None:
    """A fork took the largest thread id and ``children`` filtered every thread: lowering n promises
    walked the thread table n times (quadratic).  Now neither walks it."""
    g = ThreadGraph()
    g.threads = CountingThreads(g.threads)
    CountingThreads.walked = 0
    for i in range(500):
        _, child = g.fork(MAIN, f"t{i}", None, "<promise/>", 1)
        g.open(child, "<async>", 1)
        g.close(child, "</async>", 1)
        g.end(child)
    assert g.children(MAIN) == tuple(range(1, 501))
    assert CountingThreads.walked == 0


def test_library_api_layout_is_importable_from_the_top_and_loads_torch_lazily():
    import subprocess
    import sys

    code = (
        "import sys, pastac, pastac.cli; assert 'torch' not in sys.modules, 'torch imported eagerly'; "
        "layout = pastac.training_layout(pastac.lower(pastac.parse('a<promise topic=\"t\"/><async>b</async>')));"
        "assert isinstance(layout, pastac.Layout) and layout.mask.shape[0] == layout.position_ids.numel()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
