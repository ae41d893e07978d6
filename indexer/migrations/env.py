"""Alembic environment for the gallery database (gallery.db in an index folder).

facesearch runs migrations in code and hands over its open connection
(config.attributes["connection"]); the alembic command line gets the database from
`-x db=PATH` or `-x db=URL` (any SQLAlchemy database), the configuration's sqlalchemy.url, or the index folder rule of indexer.config.
"""
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine

from indexer.config import DATABASE_FILE, resolve_index_dir
from indexer.db import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = Base.metadata


def database_url() -> str:
    database = context.get_x_argument(as_dictionary=True).get("db")
    if database:
        return database if "://" in database else f"sqlite:///{database}"
    return config.get_main_option("sqlalchemy.url") or f"sqlite:///{resolve_index_dir() / DATABASE_FILE}"


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations(connection) -> None:
    # render_as_batch: SQLite alters tables by copying them, which batch mode does.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    with create_engine(database_url()).begin() as connection:
        run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
