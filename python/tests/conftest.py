"""A small randomly initialised Llama-style model (GQA, RoPE, a few layers; no downloaded weights)."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def make_model(attn_implementation="sdpa", seed=0, layers=3):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=8192,
                         rope_theta=10000.0, attn_implementation=attn_implementation)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return model


@pytest.fixture(scope="session")
def model():
    return make_model()


@pytest.fixture(scope="session")
def eager_model(model):
    m = make_model("eager")
    m.load_state_dict(model.state_dict())
    return m
