"""Channels: named message boards that agents post to and read (``/v1/channel``)."""
