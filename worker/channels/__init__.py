"""Delivery channels behind one small protocol (see `base.py`)."""
