"""Reading token counts off the end of Ollama answers, without parsing them whole."""

import orjson

from nomyo.dialects.ollama import final_counts

FINAL = {"model": "m", "created_at": "2025-10-26T17:15:24.166576Z", "response": "", "done": True,
         "done_reason": "stop", "context": list(range(5000)), "total_duration": 174560334,
         "load_duration": 101397084, "prompt_eval_count": 11, "prompt_eval_duration": 13074791,
         "eval_count": 18, "eval_duration": 52479709}


def test_counts_of_a_stream_whose_final_line_is_long():
    stream = b"".join(orjson.dumps({"model": "m", "response": w, "done": False}) + b"\n" for w in ("a", "b"))
    stream += orjson.dumps(FINAL) + b"\n"
    assert final_counts(stream) == (11, 18)
    assert final_counts(stream[-700:]) == (11, 18)  # only the end is needed


def test_no_counts_when_the_stream_was_cut_before_done():
    assert final_counts(orjson.dumps({"model": "m", "response": "x", "done": False}) + b"\n") is None
    assert final_counts(b"") is None


def test_text_that_looks_like_counts_does_not_count():
    line = orjson.dumps({"model": "m", "response": '"eval_count":999', "done": False}) + b"\n"
    assert final_counts(line) is None


def test_embed_answer_has_only_prompt_tokens():
    answer = orjson.dumps({"model": "e", "embeddings": [[0.1] * 300], "total_duration": 5, "prompt_eval_count": 8})
    assert final_counts(answer) == (8, 0)


def test_stream_end_sees_markers_split_across_chunks_once():
    from nomyo.framing import StreamEnd

    lines = [orjson.dumps({"model": "m", "response": w, "done": False}) + b"\n" for w in "abcde"]
    stream = b"".join(lines) + orjson.dumps(FINAL) + b"\n"
    for size in (1, 5, 7, 11, 12, 13, 64, len(stream)):
        end = StreamEnd()
        for i in range(0, len(stream), size):
            end.see(stream[i:i + size])
        assert end.complete and end.lines == 5, size
    cut = StreamEnd()
    for i in range(0, len(stream) - 200, 7):
        cut.see(stream[i:i + 7])
    assert not cut.complete and cut.counts() == (0, 5)
