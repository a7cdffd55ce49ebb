"""Delivery of frames: host copies, packing, sender thread, websocket, spill file."""
