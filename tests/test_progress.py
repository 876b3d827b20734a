"""gradflow.progress: the live line, stages reported from any thread, nesting and quiet mode."""

import io
import threading

import pytest

from gradflow import progress


def test_progress_live_line_stage_and_threads():
    progress.stage("nobody is listening")  # no display: a no-op
    assert not progress.active()
    buf = io.StringIO()
    with progress.display(2, stream=buf, live=True) as d:
        assert progress.active()
        with d.experiment("meanfield"):
            # A stage reported from a worker thread reaches the display too.
            t = threading.Thread(target=progress.stage, args=("[q-map] fixed points",))
            t.start()
            t.join()
            assert d.text == "[q-map] fixed points"
            assert d.line().startswith("[1/2] meanfield · [q-map] fixed points (0:00) · 0:0")
        with d.experiment("cnn"):
            assert d.index == 2 and d.text == ""
            with pytest.raises(ValueError, match="more experiments than total=2"):
                with d.experiment("third"):
                    pass
    assert not progress.active()
    text = buf.getvalue()
    assert "meanfield" in text and "[q-map] fixed points" in text and "[2/2] cnn" in text
    with pytest.raises(TypeError, match="text must be a str"):
        progress.stage(3)
    with pytest.raises(ValueError, match="total must be an integer >= 1"):
        progress.Display(0)
    # Nested displays: stage reports to the innermost, quiet writes nothing.
    outer, inner = io.StringIO(), io.StringIO()
    with progress.display(1, stream=outer, live=False) as d1, d1.experiment("outer"):
        with progress.display(1, stream=inner, quiet=True) as d2, d2.experiment("inner"):
            progress.stage("inner stage")
            assert d2.text == "inner stage" and d1.text == ""
        progress.stage("outer stage")
    assert inner.getvalue() == "" and "outer: outer stage" in outer.getvalue()
