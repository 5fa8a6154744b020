"""The Moshi text tokenizer: token ids -> display text, and text -> ids for role prompts (SentencePiece or tokenizer.json)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TextTokenizer:
    """Turns text token ids into display text: SentencePiece pieces with "▁" shown as a space."""

    pieces: list[str]
    silent_ids: frozenset[int] = field(default_factory=frozenset)
    encoder: object = None  # the SentencePieceProcessor / tokenizers.Tokenizer behind `encode`

    @classmethod
    def from_file(cls, path: Path, silent_ids: set[int]) -> TextTokenizer:
        path = Path(path)
        if path.suffix == ".json":
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(path))
            pieces = [tok.id_to_token(i) or "" for i in range(tok.get_vocab_size())]
            silent = set(silent_ids)
            encoder = tok
        else:
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
            pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
            silent = set(silent_ids) | {i for i in range(len(pieces)) if sp.is_control(i) or sp.is_unknown(i)}
            encoder = sp
        return cls(pieces=pieces, silent_ids=frozenset(silent), encoder=encoder)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS/EOS), as the model reads a role prompt."""
        if self.encoder is None:
            # a random model has no vocabulary: one made-up id per word keeps the prompt's length honest
            return [4 + zlib.crc32(w.encode()) % max(1, len(self.pieces) - 4) for w in text.split()]
        if hasattr(self.encoder, "encode_as_ids"):
            return list(self.encoder.encode_as_ids(text))
        return list(self.encoder.encode(text, add_special_tokens=False).ids)

    def piece(self, token_id: int) -> str:
        """Display text of one token; padding, control and out-of-vocabulary ids give ""."""
        if token_id in self.silent_ids or not 0 <= token_id < len(self.pieces):
            return ""
        piece = self.pieces[token_id]
        if piece.startswith("<") and piece.endswith(">") and len(piece) > 2:
            return ""  # <pad>, <s>, </s>, <unk> and friends of a tokenizer.json
        if piece.startswith("<0x") and piece.endswith(">"):
            return ""
        return piece.replace("\u2581", " ")

    def decode(self, token_ids) -> str:
        return "".join(self.piece(int(t)) for t in token_ids)
