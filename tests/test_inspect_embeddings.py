"""core.inspect.embeddings on data whose answer is known: PCA recovers planted axes,
neighbours equal a brute-force search, recall is 1.0 for planar data, Procrustes undoes
a rotation; plus token classes, expressions, positions and hidden states on tiny models."""

import numpy as np
import pytest
import torch

from core.inspect import embeddings as E
from core.inspect import expression as X
from tests.conftest import make_model


def random_rotation(n, seed=0):
    g = np.random.default_rng(seed)
    q, r = np.linalg.qr(g.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("N", [2000, 20])  # covariance path (N >= C) and SVD path (N < C)
def test_pca_recovers_known_axes_up_to_sign(N):
    C = 32
    g = np.random.default_rng(1)
    Q = random_rotation(C, seed=2)
    Z = g.normal(size=(N, 3))
    Z, _ = np.linalg.qr(Z - Z.mean(0))  # centred, orthonormal latent columns
    X = (Z * [10.0, 4.0, 2.0]) @ Q[:, :3].T + 0.001 * g.normal(size=(N, C)) + 5.0  # planted axes: Q[:, :3]
    p = E.pca(X, k=3)
    assert p.coords.shape == (N, 3) and p.coords.dtype == np.float32
    for j in range(3):  # the planted axes come back, up to sign
        assert abs(abs(float(p.components[j] @ Q[:, j])) - 1) < 1e-4
    ref_var = np.linalg.svd(X - X.mean(0), compute_uv=False) ** 2
    np.testing.assert_allclose(p.explained, ref_var[:3] / ref_var.sum(), rtol=1e-3)
    assert p.explained[0] > p.explained[1] > p.explained[2]
    np.testing.assert_allclose(p.coords, p.project(X), atol=1e-3)
    # the sign convention: each component's largest loading is positive, so a flipped copy agrees
    q = E.pca(-X, k=3)
    assert all(c[np.abs(c).argmax()] > 0 for c in p.components)
    np.testing.assert_allclose(np.abs(q.coords), np.abs(p.coords), atol=1e-3)


def test_pca_degenerate_inputs():
    p = E.pca(np.ones((5, 4)), k=3)  # no variance at all
    assert np.all(p.coords == 0) and np.all(p.explained == 0)
    p = E.pca(np.array([[0.0, 0.0], [1.0, 1.0]]), k=3)  # rank 1, k beyond the dimension
    assert p.coords.shape == (2, 3) and np.all(p.coords[:, 1:] == 0)
    assert p.explained[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k=0"):
        E.pca(np.ones((3, 3)), k=0)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        E.pca(np.ones(3))


def test_cosine_neighbours_equal_brute_force():
    g = np.random.default_rng(3)
    M = g.normal(size=(500, 24)).astype(np.float32)
    index = E.CosineIndex(torch.from_numpy(M))
    q = g.normal(size=24).astype(np.float32)
    ids, scores = index.search(q, k=10, exclude=[7])
    brute = (M @ q) / (np.linalg.norm(M, axis=1) * np.linalg.norm(q))
    brute[7] = -np.inf
    order = np.argsort(-brute)[:10]
    assert list(ids) == list(order)
    np.testing.assert_allclose(scores, brute[order], rtol=1e-5)
    # a token's own vector: itself first unless excluded
    assert index.search(M[42], k=1)[0][0] == 42
    assert 42 not in index.search(M[42], k=5, exclude=[42])[0]
    with pytest.raises(ValueError, match="zero"):
        index.search(np.zeros(24), k=3)
    with pytest.raises(ValueError, match="1 to 100"):
        index.search(q, k=0)


def test_expression_parsing_and_vector(bpe_tokenizer):
    tok = bpe_tokenizer
    labels = E.token_labels(tok, tok.vocab_size)
    lookup = X.display_lookup(labels)
    speak = tok.encode(" speak")
    assert len(speak) == 1  # the tiny BPE learned this word
    terms = X.parse_expression('·speak - "\\n" + #5', tok, lookup, tok.vocab_size)
    assert [(t.sign, t.id) for t in terms] == [(1, speak[0]), (-1, tok.encode("\n")[0]), (1, 5)]
    assert [t.id for t in X.parse_expression('" speak"', tok, lookup, tok.vocab_size)] == speak
    assert [t.sign for t in X.parse_expression("-a-b", tok, lookup, tok.vocab_size)] == [-1, -1]
    index = E.CosineIndex(torch.randn(tok.vocab_size, 8))
    v = index.vector(terms)
    torch.testing.assert_close(v, index.E[speak[0]] - index.E[terms[1].id] + index.E[5])
    for bad, msg in [("·speak·speak·speak·xyzzy", "not one token"), ("#99999", "out of range"),
                     ("a b", "expected \\+ or -"), ("", "type a token"), ("x" * 300, "at most 200")]:
        with pytest.raises(ValueError, match=msg):
            X.parse_expression(bad, tok, lookup, tok.vocab_size)


def test_unknown_character_is_an_error_for_char_vocab(char_tokenizer):
    labels = E.token_labels(char_tokenizer, char_tokenizer.vocab_size)
    with pytest.raises(ValueError, match="not a token"):
        X.parse_expression("é", char_tokenizer, X.display_lookup(labels), char_tokenizer.vocab_size)
    t = X.parse_expression("a + ·", char_tokenizer, X.display_lookup(labels), char_tokenizer.vocab_size)
    assert [x.id for x in t] == char_tokenizer.encode("a ")


def test_token_classes(bpe_tokenizer):
    C = E.classify_token
    assert [C(b" the"), C(b"the"), C(b"42"), C(b",."), C(b"\xe2\x80"), C(b"\n\n"), C(b"x", True), C(b"a1")] == [
        E.LEADING_SPACE, E.LETTERS, E.DIGITS, E.PUNCTUATION, E.BYTE_PIECES, E.WHITESPACE, E.SPECIAL, E.OTHER]
    classes = E.token_classes(bpe_tokenizer, bpe_tokenizer.vocab_size + 3)  # a padded vocab
    assert classes.shape == (bpe_tokenizer.vocab_size + 3,)
    assert classes[bpe_tokenizer.eot_id] == E.SPECIAL and np.all(classes[-3:] == E.OTHER)
    assert classes[bpe_tokenizer.encode(" speak")[0]] == E.LEADING_SPACE
    assert (classes == E.BYTE_PIECES).sum() >= 64  # the lone bytes 0x80..0xFF are parts of characters
    labels = E.token_labels(bpe_tokenizer, bpe_tokenizer.vocab_size + 3)
    assert labels[-1] == f"#{bpe_tokenizer.vocab_size + 2}" and labels[bpe_tokenizer.eot_id] == "<|endoftext|>"


def test_recall_is_one_for_planar_data_and_low_otherwise():
    g = np.random.default_rng(4)
    plane = g.normal(size=(300, 2)) * [3.0, 1.0]
    X = plane @ random_rotation(16, seed=5)[:2] + 1.0  # points on a 2-D plane in 16-D
    r = E.neighbour_recall(X, E.pca(X, 2).coords, k=10)
    assert r.value == pytest.approx(1.0) and not r.sampled and r.n_queries == 300
    Y = g.normal(size=(300, 16))  # isotropic: a 2-D picture loses most neighbourhoods
    low = E.neighbour_recall(Y, E.pca(Y, 2).coords, k=10, n_queries=100, seed=1)
    assert low.value < 0.5 and low.sampled and low.n_queries == 100 and low.n_points == 300
    cos = E.neighbour_recall(Y, E.pca(Y, 2).coords, k=10, metric="cosine")
    assert 0 <= cos.value < 0.5 and cos.metric == "cosine"
    with pytest.raises(ValueError, match="metric"):
        E.neighbour_recall(Y, Y[:, :2], metric="manhattan")


def test_procrustes_aligns_a_rotated_copy():
    g = np.random.default_rng(6)
    A = g.normal(size=(200, 12))
    Q = random_rotation(12, seed=7)
    B = A @ Q + 3.0
    R = E.procrustes(A, B)
    np.testing.assert_allclose(R, Q, atol=1e-8)
    aligned, d = E.align(A, B)
    np.testing.assert_allclose(aligned, B, atol=1e-4)
    assert d < 1e-5
    coords, proj, disp = E.align_checkpoints([A, B], k=2)
    assert coords.shape == (2, 200, 2)
    np.testing.assert_allclose(coords[0], coords[1], atol=1e-3)  # the same picture once aligned
    np.testing.assert_allclose(coords[1], proj.coords, atol=1e-3)
    assert disp[-1] == pytest.approx(0, abs=1e-6)
    _, _, disp2 = E.align_checkpoints([g.normal(size=(200, 12)), B])
    assert disp2[0] > 0.5  # an unrelated matrix does not align
    with pytest.raises(ValueError, match="shapes"):
        E.procrustes(A, A[:, :5])


def test_positions_and_hidden_states():
    model = make_model(50, n_layer=2, block_size=16)
    wpe = model.transformer.wpe.weight
    M = E.cosine_matrix(wpe)
    assert M.shape == (16, 16) and np.allclose(np.diag(M), 1, atol=1e-5)
    P, f = E.pool_square(M, 5)
    assert f == 4 and P.shape == (4, 4) and P[0, 0] == pytest.approx(M[:4, :4].mean(), abs=1e-6)
    assert E.pool_square(M, 16)[1] == 1
    P, f = E.pool_square(np.ones((10, 10), np.float32), 4)  # ragged last block
    assert f == 3 and P.shape == (4, 4) and np.allclose(P, 1)

    ids = [3, 1, 4, 1, 5]
    H = E.hidden_states(model, ids)
    assert H.shape == (3, 5, 64)
    emb = (model.transformer.wte.weight[ids] + wpe[:5]).detach().numpy()
    np.testing.assert_allclose(H[0], emb, atol=1e-6)
    logits, _ = model(torch.tensor([ids]))
    np.testing.assert_allclose(model.unembed(torch.from_numpy(H[-1])).detach().numpy(), logits[0].detach().numpy(),
                               atol=1e-4)
    Hn = E.hidden_states(model, ids, normalize=True)
    np.testing.assert_allclose(np.sqrt((Hn ** 2).mean(-1)), 1, atol=1e-3)
    coords, proj = E.layer_paths(Hn)
    assert coords.shape == (3, 5, 2)
    with pytest.raises(ValueError, match="0..49"):
        E.hidden_states(model, [60])
    with pytest.raises(ValueError, match="block_size"):
        E.hidden_states(model, list(range(17)))
