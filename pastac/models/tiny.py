"""Randomly initialised models and a tokenizer built in-process: for tests, and for benchmarks without weights.

``random_model`` builds a causal LM of a named shape (``SHAPES``): the tiny ones for tests (two layers, fast
on a CPU), real ones for benchmarks that time decoding at scale. ``tiny_tokenizer`` is a small byte-level BPE
tokenizer to go with them. Invariants: the same arguments give the same weights, and the global random state
is left as it was; the tiny tokenizer is the same in every process, needs no download, and decodes any text
it encodes back unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from pastac.models.errors import ModelError
from pastac.models.loading import resolve_device, resolve_dtype

#: Named shapes for randomly initialised models: ``model_type`` plus the config's arguments (the vocabulary
#: size is given to ``random_model``). The tiny ones are for tests (two layers, fast on a CPU; llama and
#: qwen2 with grouped-query attention); ``smollm2-135m`` is the default model's real shape and ``llama-7b``
#: that of Llama-2-7B, for benchmarks that time decoding at scale without weights. Position tables are
#: large because the runtime may skip positions ahead of the tokens it has.
_TINY_DECODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 4096,
}
SHAPES: dict[str, dict[str, Any]] = {
    "tiny-llama": {"model_type": "llama", **_TINY_DECODER},
    "tiny-qwen2": {"model_type": "qwen2", **_TINY_DECODER},
    "tiny-gpt2": {
        "model_type": "gpt2",
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_inner": 128,
        "n_positions": 4096,
    },
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "tie_word_embeddings": True,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
    },
    "llama-7b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096,
    },
}


def random_model(
    shape: str,
    *,
    vocab_size: int,
    seed: int = 0,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    eos_token_id: int | None = None,
) -> PreTrainedModel:
    """A randomly initialised causal LM of a named shape (see ``SHAPES``), in eval mode, with sdpa attention.

    The same shape, vocabulary size, seed, dtype and device give the same weights; the global random state
    is left as it was. ``dtype`` is a name in ``DTYPES`` or one of its torch dtypes. The weights are created
    on ``device`` directly. ``eos_token_id`` (also used as the
    begin and padding token) should be the end-of-sequence id of the tokenizer the model goes with.
    """
    if shape not in SHAPES:
        raise ModelError(f"unknown model shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if vocab_size < 1:
        raise ModelError(f"vocab_size must be positive, not {vocab_size}")
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    arguments = dict(SHAPES[shape])
    model_type = arguments.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        **arguments,
    )
    devices = [torch_device] if torch_device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch_device:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch_dtype)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Tokenizer

_TINY_EOS = "<|endoftext|>"
_TINY_VOCAB = 512

#: A plain chat layout for the tiny tokenizer: each message is ``<|role|>``, a newline, the content and the
#: end-of-sequence token; the generation prompt opens an assistant message.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|endoftext|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

#: The text the tiny tokenizer is trained on: everyday English and Pasta-Lang annotated answers, so that the
#: tags and common words get tokens of their own.
_TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "Here are three tips for better sleep and more energy during the day.",
    'Here are tips: <promise topic="sleep" tokens="3"/><async>Sleep 8 hours.</async>'
    '<promise topic="water" tokens="2"/><async>Drink water.</async><sync/> In short, rest and drink.',
    'To cook pasta: <promise topic="boil water" tokens="2"/><async>Boil salted water in a large pot.</async>'
    '<promise topic="sauce" tokens="4"/><async>Warm the tomato sauce with garlic and olive oil.</async>'
    "<sync/> Then mix them and serve.",
    'Two facts about Paris: <promise topic="capital" tokens="1"/><async>It is the capital of France.</async>'
    '<promise topic="river" tokens="1"/><async>The Seine runs through it.</async><sync/>',
    "The user asked a question, and the assistant gave a short, helpful answer.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea, the wind and the morning light.",
    "A list of three things: apples, pears and plums, all of them ripe.",
    "Please summarise the following paragraph in one sentence.",
    "The model writes its answer one token at a time, from left to right.",
    "Independent parts of an answer can be written at the same time by separate threads.",
    "Each thread sees the prompt, the text before its promise and its own tokens.",
    "At a sync point the main thread waits until every thread it started has finished.",
    'A promise names a topic and a length: <promise topic="examples" tokens="3"/>.',
    "The async block holds the content that fulfils the promise: <async>like this</async>.",
    "After <sync/> the writer sees what its threads wrote and goes on.",
    "Numbers such as 1, 2, 3, 10, 42, 100 and 2025 appear in many answers.",
    "Exercise daily, eat vegetables, and take short breaks from the screen.",
    "Learning a language takes practice: read, listen, speak and write every day.",
    "Good code is easy to read, easy to test and easy to change.",
    "First, gather the ingredients. Second, follow the recipe. Finally, enjoy the meal.",
    "The weather today is sunny with a light breeze and a few clouds.",
    "In summary, the results show a clear improvement over the baseline.",
    "She opened the window, and the room filled with fresh air.",
    "Why is the sky blue? Sunlight scatters off the molecules of the air.",
    "Ask a clear question, and you will usually get a clear answer.",
    "The train leaves at nine o'clock and arrives at noon.",
    "Keep your answers short, correct and kind.",
    "Thank you! I hope this helps. Let me know if you have more questions.",
    'Steps to plant a tree: <promise topic="hole" tokens="2"/><async>Dig a hole twice as wide as the roots.'
    '</async><promise topic="water" tokens="2"/><async>Water it well every week.</async><sync/> Done.',
    "Tabs\tand new lines\nare text too, and so are quotes: \"like this\" and 'like that'.",
)


@functools.cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (512 tokens) for tests and random models, built in-process.

    It is trained with the ``tokenizers`` library on a fixed built-in corpus of English sentences and
    Pasta-Lang annotated answers, so it is the same in every process and needs no download. Byte-level, it
    encodes any text and decodes it back unchanged. ``<|endoftext|>`` (id 0) is its end-of-sequence, begin
    and padding token; it has a simple chat template. Built once per process; treat it as read-only.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB,
        special_tokens=[_TINY_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_TINY_EOS,
        eos_token=_TINY_EOS,
        pad_token=_TINY_EOS,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer
