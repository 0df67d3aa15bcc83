-- The index a login reads to end a user's sessions past the cap (MAX_SESSIONS_PER_USER,
-- accounts.py): the user's unrevoked sessions, newest first (the primary key, id, ends every
-- secondary key, so (created_at, id) order comes from the index). With sessions_user_id alone,
-- every login read all of the user's rows, the revoked ones too, and sorted the live ones:
-- 0.7 to 1.8 s of the login's deadline for a user with 300,000 revoked sessions.
-- Built in place with reads and writes going on, as 0006 is (see there); one statement.

ALTER TABLE sessions ADD KEY sessions_user_live (user_id, revoked_at, created_at), ALGORITHM=INPLACE, LOCK=NONE;
