"""The small exception tree. Messages carry ids and keys, never patient text."""


class PatientbotError(Exception):
    """Base of every error raised on purpose by patientbot."""


class ConfigError(PatientbotError):
    """Invalid configuration: `file`, `key` and `problem` make the one-line message."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")


class SecretsError(PatientbotError):
    """A secret from the environment is missing or malformed (the value is never echoed)."""


class CryptoError(PatientbotError):
    """A ciphertext cannot be opened: unknown key id, tampering, or wrong record binding."""


class StoreError(PatientbotError):
    """The store failed an operation (connection lost, lock not obtained...)."""


class LockTimeout(StoreError):
    """The per-conversation lock was not obtained in time."""
