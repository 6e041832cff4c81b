"""Write tiny random-weight llama GGUF models for the real llama.cpp integration test.

    python -m tests.make_tiny_gguf DIR   ->  DIR/tiny-chat.gguf, DIR/tiny-embed.gguf

Two layers, 64 wide, 4 heads, a small SentencePiece-style vocabulary (control tokens, the 256
byte-fallback tokens, `▁`-prefixed pieces for letters and common words) and an embedded chat
template. The embedding model is the same network with mean pooling, so llama.cpp returns one
vector per input. The weights are random (seeded): the text they produce is noise, which is all
the router needs to prove that requests, streams and counts go through. A few hundred KB each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

WIDTH, LAYERS, HEADS, FFN, CONTEXT = 64, 2, 4, 128, 512
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = (
    "the", "a", "an", "and", "of", "to", "in", "is", "it", "you", "that", "he", "was", "for", "on",
    "are", "with", "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or",
    "had", "by", "hot", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all",
    "there", "when", "up", "use", "your", "how", "said", "hello", "hi", "world", "say", "tell",
    "me", "about", "fruit", "apple", "banana", "red", "green", "blue", "sky", "sun",
)


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, types) in llama's SentencePiece layout: <unk>, <s>, </s>, bytes, pieces."""

    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁"] + [f"▁{w}" for w in WORDS]
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"▁{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    pieces += [*"<|>/.,!?'", "<|", "|>", "user", "assistant", "system"]
    for piece in dict.fromkeys(pieces):
        if piece not in tokens:
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, [int(t) for t in types]


def write(path: Path, *, embedding: bool, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-embed" if embedding else "tiny-chat")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    if embedding:
        writer.add_pooling_type(gguf.PoolingType.MEAN)

    def tensor(name: str, *shape: int) -> None:
        values = np.ones(shape) if name.endswith("norm.weight") else rng.normal(0.0, 0.02, shape)
        writer.add_tensor(name, values.astype(np.float32))

    tensor("token_embd.weight", len(tokens), WIDTH)
    tensor("output_norm.weight", WIDTH)
    tensor("output.weight", len(tokens), WIDTH)
    for i in range(LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", WIDTH)
        for part in ("q", "k", "v", "output"):
            tensor(f"blk.{i}.attn_{part}.weight", WIDTH, WIDTH)
        tensor(f"blk.{i}.ffn_norm.weight", WIDTH)
        tensor(f"blk.{i}.ffn_gate.weight", FFN, WIDTH)
        tensor(f"blk.{i}.ffn_up.weight", FFN, WIDTH)
        tensor(f"blk.{i}.ffn_down.weight", WIDTH, FFN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_models(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    chat, embed = directory / "tiny-chat.gguf", directory / "tiny-embed.gguf"
    write(chat, embedding=False)
    write(embed, embedding=True)
    return chat, embed


if __name__ == "__main__":
    for written in write_models(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(written)
