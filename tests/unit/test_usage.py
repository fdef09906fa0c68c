from gwproxy.proxy.usage import UsageTap, inject, parse_usage, wants_injection

HEAD = b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
CONTENT = (
    b"data: " + HEAD + b'"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]}\n\n'
)
FINISH = (
    b"data: "
    + HEAD
    + b'"choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}\n\n'
)
USAGE = b"data: " + HEAD + b'"choices":[],"usage":{"prompt_tokens":13,"total_tokens":16,"completion_tokens":3}}\n\n'
DONE = b"data: [DONE]\n\n"
STREAM = CONTENT + CONTENT + FINISH + USAGE + DONE


def run(tap: UsageTap, chunks: list[bytes]) -> tuple[list[bytes], bytes]:
    out = [tap.feed(c) for c in chunks]
    return out, b"".join(out) + tap.finish()


def test_injection_only_where_vllm_would_send_no_final_usage_event() -> None:
    assert wants_injection({"stream": True})  # no stream_options: no usage event
    assert wants_injection({"stream": True, "stream_options": {"include_usage": False}})
    assert wants_injection({"stream": True, "stream_options": {"include_usage": None}})
    assert not wants_injection({"stream": True, "stream_options": {"include_usage": True}})
    assert wants_injection({"stream": True, "stream_options": {}})  # vLLM 0.32: include_usage defaults to false
    assert wants_injection({"stream": True, "stream_options": {"continuous_usage_stats": True}})
    assert not wants_injection({"stream": True, "stream_options": {"include_usage": "true"}})  # lax, as vLLM reads it
    assert not wants_injection({"stream": False})
    assert not wants_injection({})
    body = {"stream": True, "stream_options": {"include_usage": False, "continuous_usage_stats": True}}
    inject(body)  # per-chunk usage stays off: it needs include_usage, which the client turned off
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": False}
    body = {"stream": True}
    inject(body)
    assert body["stream_options"] == {"include_usage": True}


def test_strip_removes_only_the_usage_event_whole_chunks() -> None:
    tap = UsageTap(sse=True, strip=True)
    chunks = [CONTENT, CONTENT, FINISH, USAGE, DONE]
    out, body = run(tap, chunks)
    assert body == CONTENT + CONTENT + FINISH + DONE
    assert out[:2] == chunks[:2] and out[4] == DONE
    assert out[2] == b"" and out[3] == FINISH  # a finish event waits for the next: was it the last?
    assert out[0] is CONTENT  # untouched chunks are passed as the same object, no copy
    assert tap.usage == (13, 3)


FP = b',"system_fingerprint":"vllm-0.32.0-6b0d2549"'
USAGE_FP = USAGE[:-3] + FP + b"}\n\n"  # vLLM 0.32 writes the fingerprint on a stream's last event
FINISH_FP = FINISH[:-3] + FP + b"}\n\n"
STREAM_FP = CONTENT + FINISH + USAGE_FP + DONE


def test_strip_puts_the_last_events_fields_back_on_the_finish_event_as_vllm_would() -> None:
    """Usage asked for: vLLM's fingerprint is on the usage event; not asked: on the finish event.
    The client that did not ask gets the latter, at every split of the stream."""
    for cut in range(1, len(STREAM_FP)):
        tap = UsageTap(sse=True, strip=True)
        _, body = run(tap, [STREAM_FP[:cut], STREAM_FP[cut:]])
        assert body == CONTENT + FINISH_FP + DONE, cut
        assert tap.usage == (13, 3), cut
    tap = UsageTap(sse=True, strip=True)
    _, body = run(tap, [STREAM_FP[i : i + 1] for i in range(len(STREAM_FP))])
    assert body == CONTENT + FINISH_FP + DONE


def test_with_several_choices_every_finish_event_gets_them() -> None:
    """vLLM stamps each choice's finish event; the events from the first finish on are held until
    the usage event says what to stamp (another choice's tokens keep their order)."""
    second = CONTENT.replace(b'"index":0', b'"index":1')
    second_finish = FINISH.replace(b'"index":0', b'"index":1')
    tap = UsageTap(sse=True, strip=True)
    out, body = run(tap, [CONTENT + second, FINISH, second, second_finish, USAGE_FP, DONE])
    stamp = FINISH[:-3] + FP + b"}\n\n", second_finish[:-3] + FP + b"}\n\n"
    assert body == CONTENT + second + stamp[0] + second + stamp[1] + DONE
    assert out[1:4] == [b"", b"", b""]


def test_a_held_finish_event_is_released_when_the_stream_breaks() -> None:
    tap = UsageTap(sse=True, strip=True)
    assert tap.feed(CONTENT + FINISH) == CONTENT
    assert tap.release() == FINISH and tap.release() == b""


def test_strip_at_every_split_point() -> None:
    for cut in range(1, len(STREAM)):
        tap = UsageTap(sse=True, strip=True)
        _, body = run(tap, [STREAM[:cut], STREAM[cut:]])
        assert body == CONTENT + CONTENT + FINISH + DONE, cut
        assert tap.usage == (13, 3), cut


def test_strip_byte_by_byte() -> None:
    tap = UsageTap(sse=True, strip=True)
    _, body = run(tap, [STREAM[i : i + 1] for i in range(len(STREAM))])
    assert body == CONTENT + CONTENT + FINISH + DONE
    assert tap.usage == (13, 3)


def test_usage_and_done_in_one_read() -> None:
    tap = UsageTap(sse=True, strip=True)
    _, body = run(tap, [CONTENT, FINISH + USAGE + DONE])
    assert body == CONTENT + FINISH + DONE


def test_watch_mode_passes_every_chunk_unchanged() -> None:
    for cut in range(1, len(STREAM), 7):
        tap = UsageTap(sse=True, strip=False)
        chunks = [STREAM[:cut], STREAM[cut:]]
        out, body = run(tap, chunks)
        assert out == chunks and body == STREAM
        assert tap.usage == (13, 3)


def test_truncated_stream_flushes_what_was_held() -> None:
    tap = UsageTap(sse=True, strip=True)
    _, body = run(tap, [CONTENT, b"data: {partial"])
    assert body == CONTENT + b"data: {partial"
    assert tap.usage is None


def test_json_body_usage_found_in_the_tail() -> None:
    body = (
        b'{"id":"x","choices":[{"text":"'
        + b"a" * 10000
        + b'"}],"usage":{"prompt_tokens":5,"total_tokens":12,"completion_tokens":7},"kv_transfer_params":null}'
    )
    tap = UsageTap(sse=False, strip=True)
    _out, whole = run(tap, [body[i : i + 1000] for i in range(0, len(body), 1000)])
    assert whole == body
    assert tap.usage == (5, 7)


def test_parse_usage_without_completion_tokens() -> None:
    assert parse_usage(b'"usage":{"prompt_tokens":4,"total_tokens":4}') == (4, 0)
    assert parse_usage(b'{"no":"usage"}') is None


def test_an_aborted_stream_ends_as_vllm_ends_one() -> None:
    """vLLM 0.32's bytes for a request it aborts (recorded from its CPU build): a finish event with
    an empty delta and finish_reason "abort", then [DONE] — what the gateway writes when an admin
    cancels a stream its caller still reads."""
    head = b'data: {"id":"chatcmpl-abortme","object":"chat.completion.chunk","created":1796704277,"model":"tiny",'
    role = head + (
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
    )
    vllm_end = (
        head + b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"abort","stop_reason":null,'
        b'"token_ids":null}]}\n\ndata: [DONE]\n\n'
    )
    tap = UsageTap(sse=True, strip=True)
    tap.feed(role)
    assert tap.aborted(1) == vllm_end
    assert tap.aborted(2).count(b'"finish_reason":"abort"') == 2
    completion = UsageTap(sse=True, strip=False)
    completion.feed(b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[]}\n\n')
    assert b'"text":"","logprobs":null,"finish_reason":"abort"' in completion.aborted(1)
    assert UsageTap(sse=True, strip=True).aborted(1) == b""  # nothing seen yet: no head to write
