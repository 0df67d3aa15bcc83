"""fastapi-users as its documentation sets it up: SQLAlchemy users table, JWT strategy.

Configured like Gatehouse where the two can be compared: the same MariaDB primary (its own
database), bcrypt at Gatehouse's cost (pwdlib's BcryptHasher), a pool as large as Gatehouse's.
Runs only from the peer's virtualenv; settings come from the environment:
BENCH_PEER_DATABASE_URL (mysql+aiomysql://...), BENCH_PEER_JWT_SECRET, BENCH_PEER_BCRYPT_COST,
BENCH_PEER_POOL_SIZE.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas
from fastapi_users.authentication import AuthenticationBackend, BearerTransport, JWTStrategy
from fastapi_users.password import PasswordHelper
from fastapi_users_db_sqlalchemy import SQLAlchemyBaseUserTableUUID, SQLAlchemyUserDatabase
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

SECRET = os.environ["BENCH_PEER_JWT_SECRET"]
TOKEN_LIFETIME_SECONDS = 86400


class Base(DeclarativeBase):
    pass


class User(SQLAlchemyBaseUserTableUUID, Base):
    pass


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


class UserUpdate(schemas.BaseUserUpdate):
    pass


engine = create_async_engine(
    os.environ["BENCH_PEER_DATABASE_URL"],
    pool_size=int(os.environ.get("BENCH_PEER_POOL_SIZE", "16")),
    pool_recycle=300,
)
session_maker = async_sessionmaker(engine, expire_on_commit=False)
password_helper = PasswordHelper(
    PasswordHash((BcryptHasher(rounds=int(os.environ["BENCH_PEER_BCRYPT_COST"])),))
)


class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    reset_password_token_secret = SECRET
    verification_token_secret = SECRET


async def get_async_session() -> AsyncIterator[AsyncSession]:
    async with session_maker() as session:
        yield session


async def get_user_db(
    session: AsyncSession = Depends(get_async_session),
) -> AsyncIterator[SQLAlchemyUserDatabase[User, uuid.UUID]]:
    yield SQLAlchemyUserDatabase(session, User)


async def get_user_manager(
    user_db: SQLAlchemyUserDatabase[User, uuid.UUID] = Depends(get_user_db),
) -> AsyncIterator[UserManager]:
    yield UserManager(user_db, password_helper)


def get_jwt_strategy() -> JWTStrategy[User, uuid.UUID]:
    return JWTStrategy(secret=SECRET, lifetime_seconds=TOKEN_LIFETIME_SECONDS)


auth_backend = AuthenticationBackend(
    name="jwt", transport=BearerTransport(tokenUrl="auth/jwt/login"), get_strategy=get_jwt_strategy
)
fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [auth_backend])

app = FastAPI()
app.include_router(fastapi_users.get_auth_router(auth_backend), prefix="/auth/jwt")
app.include_router(fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth")
app.include_router(fastapi_users.get_users_router(UserRead, UserUpdate), prefix="/users")
