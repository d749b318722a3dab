"""Patient channels, one folder each (sms, email, telegram, portal), listed in channels.registry."""
