"""The arq worker: claims messages, renders them, delivers them, records the outcome."""
