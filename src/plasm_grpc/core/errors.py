"""Error types raised by the core."""


class PlasmError(Exception):
    """Base class of every error the core raises on purpose."""


class InvalidIdError(PlasmError, ValueError):
    """A node id, job id or hash is not in its documented hex form."""


class VerificationError(PlasmError):
    """A signature, domain, signer or hash did not check out."""


class LimitError(PlasmError):
    """A requested limit is above what this node allows."""
