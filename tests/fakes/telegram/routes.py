"""The Bot API methods the bots call, answered the way Telegram answers them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import time
import warnings
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from PIL import Image

from tests.fakes.telegram.faults import TelegramFaults
from tests.fakes.telegram.records import (
    ALL_UPDATE_TYPES,
    CHAT_ACTIONS,
    DEFAULT_UPDATE_TYPES,
    JSON,
    MAX_CALLBACK_DATA_BYTES,
    MAX_CAPTION_LENGTH,
    MAX_DOCUMENT_BYTES,
    MAX_DOWNLOAD_BYTES,
    MAX_PHOTO_BYTES,
    MAX_PHOTO_RATIO,
    MAX_PHOTO_SIDES_SUM,
    MAX_TEXT_LENGTH,
    NOT_MODIFIED,
    PHOTO_INVALID_DIMENSIONS,
    QUERY_TOO_OLD,
    ApiError,
    Call,
    StoredFile,
    StoredMessage,
    UploadedFile,
    Webhook,
    bad_request,
)
from tests.fakes.telegram.state import document_object, photo_sizes, scope_key, update_type, without_reply

# Form fields arrive as strings (python-telegram-bot JSON-encodes everything but plain strings); these are
# decoded back so recorded params look like the Bot API documents them.
_JSON_FIELDS: Final = frozenset(
    {
        "reply_markup",
        "media",
        "allowed_updates",
        "commands",
        "scope",
        "entities",
        "caption_entities",
        "reply_parameters",
        "link_preview_options",
        "message_ids",
        "results",
    }
)
_INT_FIELDS: Final = frozenset(
    {
        "chat_id",
        "from_chat_id",
        "message_id",
        "message_thread_id",
        "reply_to_message_id",
        "user_id",
        "offset",
        "limit",
        "timeout",
        "max_connections",
        "cache_time",
        "width",
        "height",
        "duration",
    }
)
_BOOL_FIELDS: Final = frozenset(
    {
        "drop_pending_updates",
        "disable_notification",
        "protect_content",
        "allow_sending_without_reply",
        "show_alert",
        "has_spoiler",
        "disable_web_page_preview",
        "disable_content_type_detection",
        "show_caption_above_media",
        "allow_paid_broadcast",
    }
)
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_BOT_COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")

MethodHandler = Callable[[dict[str, Any], list[UploadedFile]], Any]


class BotApiRoutes(TelegramFaults):
    """`/bot<token>/<method>`: every call recorded, planned faults first, then the method's handler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._methods: dict[str, tuple[str, MethodHandler]] = {}
        for name, handler in self._method_table().items():
            self._methods[name.lower()] = (name, handler)

    async def _handle_method(self, request: web.Request) -> web.Response:
        method_name = request.match_info["method"]
        canonical, handler = self._methods.get(method_name.lower(), (method_name, None))
        call = Call(canonical, {}, [], time.monotonic(), request.method)
        self._calls.append(call)
        try:
            if request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            call.params, call.files = await _read_params(request)
            failure = self._take_failure(canonical, call.params)
            if failure is not None:
                raise failure
            if handler is None:
                raise ApiError(404, "Not Found")
            result = handler(call.params, call.files)
            if asyncio.iscoroutine(result):
                result = await result
            status, body = 200, {"ok": True, "result": result}
        except ApiError as error:
            status, body = error.status, error.body()
        call.status, call.response = status, body
        self._notify()
        if (stall := self._take_stall(canonical)) is not None:
            await asyncio.sleep(stall)
        return web.json_response(body, status=status)

    # --------------------------------------------------------------------------------------- methods

    def _method_table(self) -> dict[str, MethodHandler]:
        return {
            "getMe": lambda params, files: {
                **self.bot_user,
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
            },
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "setMyCommands": self._set_my_commands,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "deleteMessage": self._delete_message,
            "sendChatAction": self._send_chat_action,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "sendMediaGroup": self._send_media_group,
            "answerCallbackQuery": self._answer_callback_query,
            "getFile": self._get_file,
        }

    async def _get_updates(self, params: dict[str, Any], files: list[UploadedFile]) -> list[JSON]:
        if self._webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        limit = min(max(_int_param(params, "limit", 100), 1), 100)
        timeout = max(_number_param(params, "timeout", 0), 0)
        if "allowed_updates" in params:
            self._set_allowed_updates(params["allowed_updates"])
        offset = params.get("offset")
        if isinstance(offset, int) and offset != 0:
            self._confirm(offset)
        # A new getUpdates ends the one still waiting, as Telegram does (409 to the older one).
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            tick = self._tick
            batch = self._take_updates(limit)
            if batch or self._closing:
                return batch
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), remaining)
            if generation != self._poll_generation:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )

    def _confirm(self, offset: int) -> None:
        if offset > 0:
            self._updates = [q for q in self._updates if q.forced or q.update["update_id"] >= offset]
        else:
            keep = sorted(q.update["update_id"] for q in self._updates if not q.forced)[offset:]
            self._updates = [q for q in self._updates if q.forced or q.update["update_id"] in keep]

    def _take_updates(self, limit: int) -> list[JSON]:
        allowed = self._allowed_updates
        self._updates = [q for q in self._updates if update_type(q.update) in allowed]
        forced = [q for q in self._updates if q.forced]
        normal = sorted((q for q in self._updates if not q.forced), key=lambda q: q.update["update_id"])
        # Duplicates first: PTB confirms up to the last update of a batch, so it must end on the newest.
        batch = (forced + normal)[:limit]
        for queued in batch:
            queued.forced = False
        return [queued.update for queued in batch]

    def _set_allowed_updates(self, value: Any) -> None:
        if not isinstance(value, list):
            raise bad_request("can't parse allowed updates JSON object")
        self._allowed_updates = frozenset(value) & ALL_UPDATE_TYPES or DEFAULT_UPDATE_TYPES

    def _set_webhook(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        url = params.get("url") or ""
        if not url:
            return self._delete_webhook(params, files)
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN.fullmatch(str(secret)):
            raise bad_request("secret token contains unallowed characters")
        drop = bool(params.get("drop_pending_updates"))
        if drop:
            self._updates.clear()
        allowed = params.get("allowed_updates")
        if allowed is not None:
            self._set_allowed_updates(allowed)
        self._webhook = Webhook(
            url=url,
            secret_token=secret,
            allowed_updates=allowed,
            max_connections=_int_param(params, "max_connections", 40),
            drop_pending_updates=drop,
        )
        return True

    def _delete_webhook(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        self._webhook = None
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    def _set_my_commands(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("can't parse commands JSON object")
        for command in commands:
            name = command.get("command", "") if isinstance(command, dict) else ""
            if not _BOT_COMMAND_NAME.fullmatch(name):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(command.get("description", "")) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        self._commands[(scope_key(params.get("scope")), params.get("language_code", ""))] = commands
        return True

    def _send_message(self, params: dict[str, Any], files: list[UploadedFile]) -> JSON:
        chat = self._chat(params)
        text, key = _render(params.get("text"), params, "text")
        if not text.strip():
            raise bad_request("message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise bad_request("message is too long")
        content: JSON = {"text": text}
        self._add_markup_and_reply(content, chat, params)
        stored = self._new_message(chat, self.bot_user, from_bot=True, content=content)
        stored.content_key = key
        return stored.data

    def _edit_message_text(self, params: dict[str, Any], files: list[UploadedFile]) -> JSON:
        stored = self._editable(params)
        if "text" not in stored.data:
            raise bad_request("there is no text in the message to edit")
        text, key = _render(params.get("text"), params, "text")
        if not text.strip():
            raise bad_request("message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise bad_request("MESSAGE_TOO_LONG")
        markup = _inline_markup(params.get("reply_markup"))
        if key == stored.content_key and markup == stored.data.get("reply_markup"):
            raise ApiError(400, NOT_MODIFIED)
        stored.data["text"] = text
        stored.content_key = key
        return self._finish_edit(stored, markup)

    def _edit_message_reply_markup(self, params: dict[str, Any], files: list[UploadedFile]) -> JSON:
        stored = self._editable(params)
        markup = _inline_markup(params.get("reply_markup"))
        if markup == stored.data.get("reply_markup"):
            raise ApiError(400, NOT_MODIFIED)
        return self._finish_edit(stored, markup)

    def _editable(self, params: dict[str, Any]) -> StoredMessage:
        if "inline_message_id" in params:
            raise bad_request("MESSAGE_ID_INVALID")
        chat = self._chat(params)
        stored = self._stored(chat["id"], params.get("message_id"), "message to edit not found")
        if not stored.from_bot:
            raise bad_request("message can't be edited")
        return stored

    def _finish_edit(self, stored: StoredMessage, markup: JSON | None) -> JSON:
        # An edit without reply_markup removes the inline keyboard, as on Telegram.
        if markup is None:
            stored.data.pop("reply_markup", None)
        else:
            stored.data["reply_markup"] = markup
        stored.data["edit_date"] = int(time.time())
        stored.edit_count += 1
        return stored.data

    def _delete_message(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        chat = self._chat(params)
        self._stored(chat["id"], params.get("message_id"), "message to delete not found").deleted = True
        return True

    def _send_chat_action(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        self._chat(params)
        if params.get("action") not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        return True

    def _send_photo(self, params: dict[str, Any], files: list[UploadedFile]) -> JSON:
        return self._send_file(params, files, "photo")

    def _send_document(self, params: dict[str, Any], files: list[UploadedFile]) -> JSON:
        return self._send_file(params, files, "document")

    def _send_file(self, params: dict[str, Any], files: list[UploadedFile], kind: str) -> JSON:
        chat = self._chat(params)
        stored_file = self._input_file(params.get(kind), files, kind, kind=kind)
        caption, key = _caption(params)
        extra: JSON = {"has_media_spoiler": True} if kind == "photo" and params.get("has_spoiler") else {}
        self._add_markup_and_reply(extra, chat, params)
        return self._post_file(chat, kind, stored_file, caption, key, extra).data

    def _send_media_group(self, params: dict[str, Any], files: list[UploadedFile]) -> list[JSON]:
        chat = self._chat(params)
        media = params.get("media")
        if not isinstance(media, list) or not all(isinstance(item, dict) for item in media):
            raise bad_request("can't parse media JSON object")
        if not 2 <= len(media) <= 10:
            raise bad_request("wrong number of messages to send")
        prepared = []
        for item in media:
            kind = item.get("type")
            if kind not in ("photo", "document"):
                raise bad_request(f"unsupported media type {kind!r} in this fake")
            stored_file = self._input_file(item.get("media"), files, None, kind=kind)
            prepared.append((kind, stored_file, *_caption(item)))
        self._media_group_counter += 1
        group_id = f"{13_000_000_000_000_000 + self._media_group_counter}"
        reply: JSON = {}
        self._add_markup_and_reply(reply, chat, {k: v for k, v in params.items() if k != "reply_markup"})
        return [
            self._post_file(chat, kind, stored_file, caption, key, {"media_group_id": group_id, **reply}).data
            for kind, stored_file, caption, key in prepared
        ]

    def _post_file(
        self, chat: JSON, kind: str, stored_file: StoredFile, caption: str, key: tuple[Any, ...], extra: JSON
    ) -> StoredMessage:
        """The bot's message carrying one photo or document (with its caption, markup, reply, group)."""
        content: JSON = {**extra}
        content[kind] = photo_sizes(stored_file) if kind == "photo" else document_object(stored_file)
        if caption:
            content["caption"] = caption
        stored = self._new_message(chat, self.bot_user, from_bot=True, content=content)
        stored.content_key = key
        if kind == "photo":
            stored.photo = stored_file
        else:
            stored.document = stored_file
        return stored

    def _answer_callback_query(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        query = self._callback_queries.get(str(params.get("callback_query_id")))
        expired = query is not None and time.monotonic() - query.created_at > self.callback_query_ttl
        if query is None or query.answer is not None or expired:
            raise ApiError(400, QUERY_TOO_OLD)
        query.answer = dict(params)
        return True

    def _add_markup_and_reply(self, content: JSON, chat: JSON, params: dict[str, Any]) -> None:
        markup = _inline_markup(params.get("reply_markup"))
        if markup is not None:
            content["reply_markup"] = markup
        reply = params.get("reply_parameters")
        if isinstance(reply, dict):
            target_id, allow = reply.get("message_id"), bool(reply.get("allow_sending_without_reply"))
        else:
            target_id, allow = (
                params.get("reply_to_message_id"),
                bool(params.get("allow_sending_without_reply")),
            )
        if target_id is None:
            return
        target = self._messages.get(chat["id"], {}).get(target_id) if isinstance(target_id, int) else None
        if target is None or target.deleted:
            if not allow:
                raise bad_request("message to be replied not found")
            return
        content["reply_to_message"] = without_reply(target.data)

    def _get_file(self, params: dict[str, Any], files: list[UploadedFile]) -> JSON:
        stored = self._files.get(str(params.get("file_id")))
        if stored is None:
            raise bad_request("invalid file_id")
        if len(stored.data) > MAX_DOWNLOAD_BYTES:
            raise bad_request("file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    async def _handle_file(self, request: web.Request) -> web.Response:
        """``/file/bot<token>/<file_path>``: the bytes of a file ``getFile`` described."""
        self.file_downloads.append(request.match_info["path"])
        if request.match_info["token"] != self.token:
            return web.json_response(ApiError(401, "Unauthorized").body(), status=401)
        for stored in self._files.values():
            if stored.file_path == request.match_info["path"]:
                return web.Response(body=stored.data, content_type=stored.content_type)
        return web.json_response(ApiError(404, "Not Found").body(), status=404)

    def _input_file(
        self, value: Any, files: list[UploadedFile], field_name: str | None, *, kind: str
    ) -> StoredFile:
        upload: UploadedFile | None = None
        if isinstance(value, str) and value.startswith("attach://"):
            upload = next((f for f in files if f.field == value.removeprefix("attach://")), None)
            if upload is None:
                raise bad_request(f"wrong HTTP URL specified: {value} is not among the uploaded parts")
        elif value is None and field_name is not None:
            upload = next((f for f in files if f.field == field_name), None)
            if upload is None:
                raise bad_request(f"there is no {kind} in the request")
        elif isinstance(value, str) and value.startswith(("http://", "https://")):
            raise bad_request("failed to get HTTP URL content")
        elif isinstance(value, str):
            stored = self._files.get(value)
            if stored is None:
                raise bad_request("wrong file identifier/HTTP URL specified")
            return stored
        else:
            raise bad_request(f"there is no {kind} in the request")
        return self._store_upload(upload, kind=kind)

    def _store_upload(self, upload: UploadedFile, *, kind: str) -> StoredFile:
        width = height = 0
        if kind == "photo":
            width, height = _photo_dimensions(upload.data)
        elif len(upload.data) > MAX_DOCUMENT_BYTES:
            raise ApiError(413, "Request Entity Too Large")
        self._file_counter += 1
        number = self._file_counter
        extension = "jpg" if kind == "photo" else (upload.filename or "file").rsplit(".", 1)[-1]
        stored = StoredFile(
            file_id=f"{'AgAC' if kind == 'photo' else 'BQAC'}fake{number:06d}",
            file_unique_id=f"AQADfake{number:06d}",
            data=upload.data,
            content_type=upload.content_type,
            filename=upload.filename,
            file_path=f"{kind}s/file_{number}.{extension}",
            width=width,
            height=height,
        )
        self._files[stored.file_id] = stored
        return stored


# --------------------------------------------------------------------------------------------------------
# Request parsing


async def _read_params(request: web.Request) -> tuple[dict[str, Any], list[UploadedFile]]:
    raw: dict[str, Any] = dict(request.query)
    files: list[UploadedFile] = []
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise bad_request("can't parse JSON encoded request body") from None
            if not isinstance(body, dict):
                raise bad_request("JSON body must be an object")
            raw.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    files.append(UploadedFile(key, value.filename, value.file.read(), value.content_type))
                else:
                    raw[key] = value
    return {key: _decode_field(key, value) for key, value in raw.items()}, files


def _decode_field(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if key in _JSON_FIELDS:
        try:
            return json.loads(value)
        except ValueError:
            raise bad_request(f"can't parse {key.replace('_', ' ')} JSON object") from None
    if key in _INT_FIELDS:
        with contextlib.suppress(ValueError):
            return int(value)
        with contextlib.suppress(ValueError):
            return float(value)
        return value
    if key in _BOOL_FIELDS:
        return value.lower() in ("true", "1")
    return value


def _number_param(params: dict[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"wrong parameter {key} in request")
    return value


def _int_param(params: dict[str, Any], key: str, default: int) -> int:
    return int(_number_param(params, key, default))


def _inline_markup(markup: Any) -> JSON | None:
    """The markup Telegram echoes back in the Message: inline keyboards only, after its validation."""
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" not in markup:
        return None  # reply keyboards and keyboard removal are accepted but not part of the Message
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise bad_request('field "inline_keyboard" of the InlineKeyboardMarkup must be an Array of Arrays')
    for row in rows:
        for button in row:
            if not isinstance(button, dict) or not button.get("text"):
                raise bad_request(
                    "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
                )
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA_BYTES:
                raise bad_request("BUTTON_DATA_INVALID")
            url = button.get("url")
            if url is not None and not str(url).startswith(("http://", "https://", "tg://")):
                raise bad_request(f"inline keyboard button URL '{url}' is invalid: Unsupported URL protocol")
            if data is None and url is None and len(button) == 1:
                raise bad_request(
                    "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
                )
    if not any(rows):
        return None
    return {"inline_keyboard": rows}


# --------------------------------------------------------------------------------------------------------
# Files


def _photo_dimensions(data: bytes) -> tuple[int, int]:
    if len(data) > MAX_PHOTO_BYTES:
        raise ApiError(400, PHOTO_INVALID_DIMENSIONS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise ApiError(400, PHOTO_INVALID_DIMENSIONS) from None
    except (OSError, ValueError, SyntaxError):
        raise bad_request("IMAGE_PROCESS_FAILED") from None
    if width + height > MAX_PHOTO_SIDES_SUM or max(width, height) > MAX_PHOTO_RATIO * min(width, height):
        raise ApiError(400, PHOTO_INVALID_DIMENSIONS)
    return width, height


# --------------------------------------------------------------------------------------------------------
# Text


def _caption(params: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    caption, key = _render(params.get("caption") or "", params, "caption")
    if len(caption) > MAX_CAPTION_LENGTH:
        raise bad_request("message caption is too long")
    return caption, key


def _render(text: Any, params: dict[str, Any], field_name: str) -> tuple[str, tuple[Any, ...]]:
    """The text as shown, and a key that changes whenever text or entities do ("not modified" check).

    The bots send plain text and never a parse mode (DESIGN's safety rules: a prompt is shown as typed),
    so this fake refuses any parse_mode instead of parsing Markdown or HTML.
    """
    if text is None:
        raise bad_request(f"message {field_name} is empty" if field_name == "text" else "caption is empty")
    if params.get("parse_mode"):
        raise bad_request("this fake takes no parse_mode: the bots send plain text")
    explicit = params.get("entities" if field_name == "text" else "caption_entities")
    return str(text), (str(text), json.dumps(explicit))
