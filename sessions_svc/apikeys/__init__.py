"""ApiKeyService: ``ck_`` API keys of every tenant, hosted by the sessions service.

The keys live in their own Postgres schema ``auth`` with their own Alembic history; other
services verify keys through ``ApiKeyService.VerifyApiKey`` and never read the table.
"""
