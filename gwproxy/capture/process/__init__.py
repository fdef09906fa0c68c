"""The capture writer's process pair: the courier (in the gateway) hands numbered record lines to the
worker (its own process: parse, thread, write), which acknowledges them; see each module."""
