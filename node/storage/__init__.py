"""Database storage: engines, models and transactions (SQLAlchemy 2). Repositories never commit."""
