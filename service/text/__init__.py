"""Generated text: incremental UTF-8-safe detokenization and stop strings. No gRPC."""

from service.text.detokenizer import IncrementalDetokenizer, TextDelta, TextStream
from service.text.stops import find_stop, held_back_length

__all__ = ["IncrementalDetokenizer", "TextDelta", "TextStream", "find_stop", "held_back_length"]
