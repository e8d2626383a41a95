"""The pieces behind issue 16's fixes, without a browser: an unknown character's own bytes, a
one-character span named as one, bare words in an embedding expression, the Decode tab's
bounded streaming and visible whitespace, and figures whose labels and colours stay apart."""

from __future__ import annotations

import math

import numpy as np

from core.inspect import embeddings as E
from core.inspect import expression as X
from core.inspect import tokens as T


def test_an_unknown_character_shows_its_own_utf8_bytes(char_tokenizer):
    view = T.tokenize(char_tokenizer, "a👍b")
    assert view.ids[1] == char_tokenizer.unk_id
    assert view.bytes_hex == ["61", "f0 9f 91 8d", "62"]  # the emoji's bytes, not those of "<unk>"


def test_a_one_character_span_reads_as_one_character(char_tokenizer):
    from app.tabs.tokens import details

    d = {"text": "ab", "groups": [{"tokens": [0, 1], "start": 1, "end": 2, "text": "b"},
                                  {"tokens": [1, 2], "start": 0, "end": 2, "text": "ab"}],
         "ids": [1, 2], "tokens": ["b", "ab"], "bytes": ["62", "61 62"], "byte_level": ["b", "ab"],
         "offsets": [[1, 2], [0, 2]]}
    assert "character 1 (" in details(d, 0)[0]
    assert "characters 0–1 (" in details(d, 1)[0]


def test_bare_words_take_their_leading_space_form(bpe_tokenizer):
    tok = bpe_tokenizer
    labels = E.token_labels(tok, tok.vocab_size)
    lookup = X.display_lookup(labels)
    speak = tok.encode(" speak")
    assert len(speak) == 1
    terms = X.parse_expression("speak - speak", tok, lookup, tok.vocab_size)
    assert [(t.id, t.spaced, t.text) for t in terms] == [(speak[0], True, "speak"), (speak[0], True, "speak")]
    quoted = X.parse_expression('"s"', tok, lookup, tok.vocab_size)[0]
    assert not quoted.spaced and quoted.id == tok.encode("s")[0]  # quoted: exactly as written


def test_decode_streams_at_a_bounded_rate_and_shows_whitespace():
    from app.tabs import decode as dec

    gaps = [dec.stream_interval(t) for t in (0.0, 1.0, 5.0, 30.0, 300.0)]
    assert gaps == sorted(gaps) and gaps[0] == dec.STREAM_MIN_S and gaps[-1] == dec.STREAM_MAX_S
    assert dec._visible(" ") == "·" and dec._visible("\n") == "↵\n" and dec._visible(" the") == " the"


def test_sweep_methods_have_their_own_colours_and_the_axis_fits_the_points():
    from app.figures.decode import sweep_figure

    pts = [dict(label=m, temperature=t, perplexity=2.0 + i + t, distinct_2=0.7 + 0.05 * i, unique=3)
           for i, m in enumerate(["Greedy", "Sampling", "Top-k", "Top-p", "Beam search"]) for t in (0.5, 1.0)]
    fig = sweep_figure(pts)
    colours = [t.marker.color for t in fig.data]
    assert len(set(colours)) == 5  # greedy and beam no longer share one
    lo, hi = fig.layout.xaxis.range
    assert 0.6 < lo < 0.7 and 0.9 < hi <= 1.05  # fitted to 0.7–0.9, not 0–1
    assert len({t.textposition for t in fig.data}) == 5  # each method's labels sit on their own side


def test_beam_tree_labels_only_its_best_path():
    from app.figures.decode import beam_tree_figure

    nodes = [dict(id=0, step=0, parent=-1, label="⟨prompt⟩", score=0.0, final_score=None)]
    nodes += [dict(id=i, step=1, parent=0, label=f"t{i}", score=-i, final_score=None) for i in (1, 2, 3)]
    nodes += [dict(id=4, step=2, parent=1, label="end", score=-1.5, final_score=-1.5)]
    fig = beam_tree_figure(nodes, [0, 1, 4])
    text = list(fig.data[-1].text)
    assert text == ["⟨prompt⟩", "t1", "", "", "end"]
    assert fig.data[-1].textposition[1] != fig.data[-1].textposition[4]  # neighbours on the path alternate


def test_parameter_bar_labels_have_room_after_the_longest_bar():
    from app.figures.model import params_by_kind

    fig = params_by_kind({"embedding": 400_000, "feed-forward": 526_848})
    assert fig.data[0].textposition == "outside"
    assert fig.layout.xaxis.range[1] >= 1.4 * 526_848
    assert math.isclose(sum(np.asarray(fig.data[0].x)), 926_848)
