"""Telegram through aiogram: webhook intake and outbound sends."""
