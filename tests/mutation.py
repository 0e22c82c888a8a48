"""A hypothesis strategy shared by the decoder fuzz tests: a real frame, slightly broken."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes replaced, flipped, inserted or deleted, or cut short."""
    frame = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, max(len(frame) - 1, 0)))
        action = draw(st.sampled_from(["set", "flip", "insert", "delete", "cut"]))
        if action == "set" and frame:
            frame[where] = draw(st.integers(0, 255))
        elif action == "flip" and frame:
            frame[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            frame.insert(where, draw(st.integers(0, 255)))
        elif action == "delete" and frame:
            del frame[where]
        elif action == "cut":
            del frame[where:]
    return bytes(frame)
