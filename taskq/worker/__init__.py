"""The worker: master thread, event-loop thread, sync-task threads, heartbeat."""
