"""The engine's version, recorded on every event and every serialized state."""

ENGINE_VERSION = "0.1.0"
