"""Web agent desk sign-in: argon2 passwords, signed single-use sign-in links, and server-side
sessions with an idle and an absolute limit, each carrying its own CSRF token.

Sessions live in the store (kv namespace ``desk-session``) under a keyed hash of the random id
the cookie carries, so store key names never hold a usable session id. The idle and absolute
limits are checked against the stored times on the desk's clock at every request, not left to
the store's expiry alone: an ended session is noticed, deleted and its sign-out audited.

Sign-in attempts count per account name as typed (`Store.count_hit`), whether or not the
account exists, so an unknown account answers exactly like a wrong password, lockout included.
An attempt is counted *before* its password is checked (an atomic increment), so concurrent
guesses cannot all pass the check; a successful sign-in starts the count afresh. Password
checks (argon2, 64 MiB each) run at most `MAX_HASHING` at a time, whoever asks.

Auditing: failures that name a real account (a wrong password, a used link) are audited each
time (the lockout bounds them); a lockout once per window; anonymous failures (unknown
accounts, invalid or expired links: anyone can send those, as fast as they like) once per
`ANON_AUDIT_SECONDS` per reason, all of them logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from bot.config.agents import DeskAccount, DeskConfig
from bot.core.crypto import KeyMaterial
from bot.core.envelopes import utcnow
from bot.core.errors import PatientbotError
from bot.store import Store
from bot.store.audit import AuditEvent, AuditLog

log = structlog.get_logger("patientbot.desk_auth")

SESSION_NS = "desk-session"
USED_TOKEN_NS = "desk-token-used"
SIGNIN_NS = "desk-signin"
ANON_AUDIT_NS = "desk-signin-anon"
ANON_AUDIT_SECONDS = 300.0
MAX_HASHING = 4  # concurrent password checks per process
EPOCH_SECONDS = 30 * 86400  # how long an account's count epoch is remembered
TOKEN_SALT = "patientbot-desk-signin"
MAX_ACCOUNT_CHARS = 64
MAX_PASSWORD_CHARS = 1024
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
_TOKEN_ID = re.compile(r"[0-9a-f]{24}")
# Verified when the account is unknown or has no password, so that such an answer takes as
# long as a wrong password does. Its password is random and was thrown away.
_DUMMY_HASH = ("$argon2id$v=19$m=65536,t=3,p=4$sfGNF8bJhFfw8dSB15Q06g$"
               "NfoaW2qyY5L4B1JlJ9iYTKe5wLsWySP73lud8az/lVo")


def desk_secret(keys: KeyMaterial) -> bytes:
    """The desk's own key (sign-in links, CSRF tokens, session references)."""
    return keys.hasher.derive_key("agent-desk-v1")


class SignInRefused(PatientbotError):
    """`code`: bad_credentials, locked, token_invalid, token_expired, token_used."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class SessionEnded(PatientbotError):
    """A stored session passed its idle (`idle`) or absolute (`absolute`) limit."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class DeskSession:
    """A signed-in agent. `flash` is the code of the message the next page shows."""

    ref: str
    account: DeskAccount
    csrf: str
    issued_at: datetime
    seen_at: datetime
    via: str
    flash: str = ""

    def record(self) -> dict[str, str]:
        return {"a": self.account.id, "csrf": self.csrf, "iat": self.issued_at.isoformat(),
                "seen": self.seen_at.isoformat(), "via": self.via, "flash": self.flash}


def _clocked_signer(clock: Callable[[], datetime]) -> type[TimestampSigner]:
    """itsdangerous reads `time.time()`; the desk's clock decides a link's age instead."""

    class ClockedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock().timestamp())

    return ClockedSigner


def token_serializer(secret: bytes, clock: Callable[[], datetime] = utcnow
                     ) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=TOKEN_SALT, signer=_clocked_signer(clock))


def sign_in_token(secret: bytes, account_id: str, *,
                  clock: Callable[[], datetime] = utcnow) -> str:
    """A signed sign-in link token for the account (`patientbot desk token`); single use,
    valid for `token_minutes`."""
    return token_serializer(secret, clock).dumps({"a": account_id,
                                                  "j": secrets.token_hex(12)})


class DeskAuth:
    """Passwords, sign-in links and sessions of the web agent desk."""

    def __init__(self, desk: DeskConfig, *, store: Store, audit: AuditLog, secret: bytes,
                 clock: Callable[[], datetime] = utcnow,
                 passwords: PasswordHasher | None = None,
                 max_hashing: int = MAX_HASHING) -> None:
        self._desk = desk
        self._store = store
        self._audit = audit
        self._secret = secret
        self._clock = clock
        self._tokens = token_serializer(secret, clock)
        self._passwords = passwords or PasswordHasher()
        self._hashing = asyncio.Semaphore(max_hashing)

    def _ref(self, purpose: str, value: str) -> str:
        return hmac.new(self._secret, f"{purpose}\x00{value}".encode(),
                        hashlib.sha256).hexdigest()[:32]

    # --- passwords -------------------------------------------------------------------------
    async def password_sign_in(self, account_id: str, password: str) -> DeskAccount:
        """The account, or `SignInRefused` (bad_credentials, locked); failures audited."""
        typed = account_id.strip().lower()[:MAX_ACCOUNT_CHARS]
        name = self._ref("signin", typed)
        account = self._desk.account(typed)
        actor = f"agent:{account.id}" if account else "unknown"
        # The attempt counts before the password is checked: of any number of concurrent
        # guesses, only `max_signin_attempts` per window reach the check. The counter is
        # named by the account's epoch, which only a successful sign-in changes, so an
        # agent's own sign-ins never lock them out.
        epoch = await self._store.kv_get(SIGNIN_NS, name)
        counter = self._ref("signin-count", f"{name}\x00{epoch['e'] if epoch else ''}")
        attempts = await self._store.count_hit(SIGNIN_NS, counter,
                                               window=self._desk.signin_lockout_minutes * 60)
        if attempts > self._desk.max_signin_attempts:
            if attempts == self._desk.max_signin_attempts + 1:  # audited once per lockout
                await self._refused(actor, "locked")
            else:
                log.info("desk sign-in refused", reason="locked")
            raise SignInRefused("locked")
        stored = account.password_hash if account and account.password_hash else _DUMMY_HASH
        # Shielded: a request that goes away does not free its slot before its hash is done.
        ok = await asyncio.shield(self._check_password(stored, password[:MAX_PASSWORD_CHARS]))
        if not ok or account is None or not account.password_hash:
            await self._refused(actor, "bad_password" if account else "unknown_account")
            raise SignInRefused("bad_credentials")
        await self._store.kv_set(SIGNIN_NS, name, {"e": secrets.token_hex(8)},
                                 ttl=EPOCH_SECONDS)
        return account

    async def _check_password(self, stored: str, password: str) -> bool:
        """argon2 in a thread, at most `max_hashing` at a time."""
        async with self._hashing:
            return await asyncio.to_thread(self._verify, stored, password)

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._passwords.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    async def _refused(self, actor: str, reason: str) -> None:
        """Audit a refused sign-in; anonymous ones (anyone can cause them, without limit)
        once per `ANON_AUDIT_SECONDS` per reason, counted in the store meanwhile."""
        if actor == "unknown":
            seen = await self._store.count_hit(ANON_AUDIT_NS, reason,
                                               window=ANON_AUDIT_SECONDS)
            if seen > 1:
                log.info("desk sign-in refused", reason=reason, anonymous_in_window=seen)
                return
        await self._audit.record(AuditEvent("desk.signin_failed", actor, ref=reason))
        log.info("desk sign-in refused", reason=reason)

    # --- sign-in links ---------------------------------------------------------------------
    async def check_token(self, token: str, *, redeem: bool) -> DeskAccount:
        """The account a sign-in link names, or `SignInRefused` (token_invalid,
        token_expired, token_used). `redeem`: use it up (atomically: a link signs in once);
        without, only look (the confirmation page, so link scanners cannot use it up)."""
        try:
            claims = self._tokens.loads(token, max_age=self._desk.token_minutes * 60)
        except SignatureExpired:
            await self._refused("unknown", "token_expired")
            raise SignInRefused("token_expired") from None
        except BadSignature:
            await self._refused("unknown", "token_invalid")
            raise SignInRefused("token_invalid") from None
        account_id = claims.get("a") if isinstance(claims, dict) else None
        token_id = claims.get("j") if isinstance(claims, dict) else None
        account = self._desk.account(account_id) if isinstance(account_id, str) else None
        if account is None or not isinstance(token_id, str) or not _TOKEN_ID.fullmatch(token_id):
            await self._refused("unknown", "token_invalid")
            raise SignInRefused("token_invalid")
        # Remembered a little longer than the link lives, so a used link stays used.
        keep = (self._desk.token_minutes + 1) * 60
        if redeem:
            fresh = await self._store.kv_create_all(USED_TOKEN_NS, [token_id],
                                                    {"a": account.id}, ttl=keep)
        else:
            fresh = not await self._store.kv_existing(USED_TOKEN_NS, [token_id])
        if not fresh:
            await self._refused(f"agent:{account.id}", "token_used")
            raise SignInRefused("token_used")
        return account

    # --- sessions --------------------------------------------------------------------------
    async def start_session(self, account: DeskAccount, *, via: str) -> tuple[str, DeskSession]:
        """A new session (fresh id: never reuse one from before the sign-in); audited."""
        sid = secrets.token_urlsafe(32)
        now = self._clock()
        session = DeskSession(ref=self._ref("session", sid), account=account,
                              csrf=secrets.token_urlsafe(32), issued_at=now, seen_at=now,
                              via=via)
        await self.save(session)
        await self._audit.record(AuditEvent("desk.signin", f"agent:{account.id}", ref=via))
        log.info("desk sign-in", agent=account.id, via=via)
        return sid, session

    def _ends_at(self, session: DeskSession) -> datetime:
        return min(session.seen_at + timedelta(minutes=self._desk.idle_minutes),
                   session.issued_at + timedelta(hours=self._desk.absolute_hours))

    async def save(self, session: DeskSession) -> None:
        """Store the session, kept until it could end at the latest."""
        ttl = (session.issued_at + timedelta(hours=self._desk.absolute_hours)
               - self._clock()).total_seconds()
        await self._store.kv_set(SESSION_NS, session.ref, session.record(), ttl=max(ttl, 1.0))

    async def touch(self, session: DeskSession) -> None:
        """The agent did something: the idle limit starts again."""
        session.seen_at = self._clock()
        await self.save(session)

    async def session(self, sid: str | None) -> DeskSession | None:
        """The live session the cookie names, None if there is none, or `SessionEnded`
        (after deleting it and auditing the automatic sign-out)."""
        if not sid or not _SESSION_ID.fullmatch(sid):
            return None
        ref = self._ref("session", sid)
        data = await self._store.kv_get(SESSION_NS, ref)
        if data is None:
            return None
        account = self._desk.account(str(data.get("a", "")))
        try:
            session = DeskSession(ref=ref, account=account, csrf=data["csrf"],  # type: ignore[arg-type]
                                  issued_at=datetime.fromisoformat(data["iat"]),
                                  seen_at=datetime.fromisoformat(data["seen"]),
                                  via=data.get("via", ""), flash=data.get("flash", ""))
        except (KeyError, TypeError, ValueError):
            await self._store.kv_delete(SESSION_NS, ref)
            return None
        if account is None:  # the account was removed from agents.yml
            await self._store.kv_delete(SESSION_NS, ref)
            return None
        now = self._clock()
        if now >= self._ends_at(session):
            absolute = session.issued_at + timedelta(hours=self._desk.absolute_hours)
            await self.end(session, "absolute" if now >= absolute else "idle")
            raise SessionEnded("absolute" if now >= absolute else "idle")
        return session

    async def end(self, session: DeskSession, reason: str) -> None:
        """Sign out: the session is deleted (`reason`: agent, idle, absolute); audited."""
        await self._store.kv_delete(SESSION_NS, session.ref)
        await self._audit.record(AuditEvent("desk.signout", f"agent:{session.account.id}",
                                            ref=reason))
        log.info("desk sign-out", agent=session.account.id, reason=reason)

    # --- CSRF ------------------------------------------------------------------------------
    @staticmethod
    def check_csrf(session: DeskSession, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(session.csrf.encode(),
                                                   str(token).encode("utf-8", "replace"))

    def signin_csrf(self, pre: str) -> str:
        """The sign-in forms' CSRF token, bound to the pre-session cookie `pre`."""
        return self._ref("signin-form", pre)

    def check_signin_csrf(self, pre: str | None, token: str | None) -> bool:
        if not pre or not token:
            return False
        return hmac.compare_digest(self.signin_csrf(pre).encode(),
                                   str(token).encode("utf-8", "replace"))
