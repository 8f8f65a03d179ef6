"""Bridge: live game feeds (SOS BakkesMod plugin, custom plugins) -> live.frames."""
