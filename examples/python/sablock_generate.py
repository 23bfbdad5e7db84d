"""Compress a transformers model's KV cache with kvevict's SABlock through the kvpress press, then
generate.

The model is a small randomly initialised Llama (GQA, RoPE) and the tokenizer a word-level one
built in memory, so the example runs anywhere without downloads; with a real checkpoint, load it
with `AutoModelForCausalLM.from_pretrained(...)` and pass `kvevict.kvpress.delimiter_ids(tokenizer)`.

    python examples/python/sablock_generate.py
"""

import torch
from kvpress import KVPressTextGenerationPipeline
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import kvevict
from kvevict.kvpress import KvevictPress, delimiter_ids

text = ("the river runs north , past the old mill and the bridge . the key to the gate is under the third stone , "
        "beside the well . farmers bring grain on market days , and the miller weighs it twice . ")
words = sorted(set(text.split()) | {"where", "is", "key", "?"})
vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2, **{w: 3 + i for i, w in enumerate(words)}}
backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="[BOS]",
                                    eos_token="[EOS]", model_max_length=8192)

torch.manual_seed(0)
config = LlamaConfig(vocab_size=len(vocab), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                     num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=8192)
model = LlamaForCausalLM(config).eval()

policy = kvevict.SABlock(sinks=4, window=32, budget=256, delimiter_ids=delimiter_ids(tokenizer))
press = KvevictPress(policy)
context = text * 20
print(f"context: {len(tokenizer.encode(context))} tokens; policy: {policy}")

pipe = KVPressTextGenerationPipeline(model=model, tokenizer=tokenizer)
cache = DynamicCache()
answer = pipe(context, question=" where is the key ?", press=press, max_new_tokens=8, cache=cache)["answer"]
kept = {layer: int(plan.counts[0]) for layer, plan in press.plans.items()}
print(f"kept per KV head, by layer: {kept}")
print(f"cache held by the pipeline afterwards: {cache.get_seq_length()} tokens per head (layer 0)")
print(f"answer (random weights, so words at random): {answer!r}")
assert all(n == 256 for n in kept.values())
