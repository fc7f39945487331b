import pytest
from hypothesis import given
from hypothesis import strategies as st

from puzzlekit import AttentionConfig, BlockConfig, ConfigError, FFNConfig

attn = st.one_of(
    st.integers(1, 128).map(AttentionConfig.gqa),
    st.just(AttentionConfig.make_linear()),
    st.just(AttentionConfig.make_no_op()),
)
ffn = st.one_of(
    st.integers(1, 500_000).map(FFNConfig.swiglu),
    st.just(FFNConfig.make_linear()),
    st.just(FFNConfig.make_no_op()),
)
blocks = st.builds(BlockConfig, attn, ffn)


@given(blocks)
def test_block_round_trips_through_dict_and_key(b):
    assert BlockConfig.from_dict(b.to_dict()) == b
    assert BlockConfig.from_key(b.key) == b
    assert hash(BlockConfig.from_key(b.key)) == hash(b)


def test_frozen_and_hashable():
    b = BlockConfig(AttentionConfig.gqa(8), FFNConfig.swiglu(14336))
    with pytest.raises(AttributeError):
        b.attention = AttentionConfig.make_no_op()  # type: ignore[misc]
    assert len({b, BlockConfig(AttentionConfig.gqa(8), FFNConfig.swiglu(14336))}) == 1
    assert b.attention.kind == "gqa" and b.ffn.kind == "swiglu"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_kv_heads": 0}, "num_kv_heads"),
        ({"num_kv_heads": -2}, "num_kv_heads"),
        ({"num_kv_heads": 2.5}, "num_kv_heads"),
        ({"num_kv_heads": 4, "no_op": True}, "exactly one"),
        ({}, "exactly one"),
        ({"linear": "yes"}, "linear"),
    ],
)
def test_invalid_attention_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        AttentionConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"intermediate_size": 0}, {"intermediate_size": True}, {"linear": True, "no_op": True}])
def test_invalid_ffn(kwargs):
    with pytest.raises(ConfigError, match="ffn"):
        FFNConfig(**kwargs)


def test_bad_keys_and_kinds():
    with pytest.raises(ConfigError, match="attn=gqa"):
        BlockConfig.from_key("nonsense")
    with pytest.raises(ConfigError, match="'gqa', 'linear', 'no_op'"):
        AttentionConfig.from_dict({"kind": "mha"})
