"""Wire schemas of /api/auth and /api/admin/users (marshmallow)."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from gwproxy.bodies import MAX_ID, StrictBool


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class Login(_Strict):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024))


class Refresh(_Strict):
    refresh_token = fields.String(required=True, validate=validate.Length(min=1, max=256))


def _models(**kw: object) -> fields.List[str]:
    return fields.List(
        fields.String(validate=validate.Length(min=1, max=256)),
        allow_none=True,
        validate=validate.Length(max=1000),
        metadata={"description": "the models it may name (served names or profile ids); null: any"},
        **kw,  # type: ignore[arg-type]
    )


class NewKey(_Strict):
    name = fields.String(load_default="", validate=validate.Length(max=128))
    allowed_models = _models(load_default=None)
    expires_days = fields.Float(
        load_default=None, allow_none=True, validate=validate.Range(min=0, max=36500, min_inclusive=False)
    )
    user_id = fields.Integer(
        load_default=None, allow_none=True, strict=True, validate=validate.Range(min=1, max=MAX_ID)
    )


class NewUser(_Strict):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(required=True, validate=validate.Length(min=8, max=1024))
    role = fields.String(load_default="user", validate=validate.OneOf(["user", "admin"]))
    allowed_models = _models(load_default=None)


class UserChange(_Strict):
    role = fields.String(validate=validate.OneOf(["user", "admin"]))
    active = StrictBool()
    capture = StrictBool()
    allowed_models = _models()


# ---- answers (what the routes render; the API docs show these) ----


class TokenPair(Schema):
    access_token = fields.String(required=True)
    token_type = fields.String(required=True)
    expires_in = fields.Integer(required=True)
    refresh_token = fields.String(required=True)
    refresh_expires_in = fields.Integer(required=True)


class Me(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    role = fields.String(required=True)
    auth = fields.String(required=True)
    key_id = fields.Integer(required=True, allow_none=True)


class ApiKey(Schema):
    id = fields.Integer(required=True)
    user_id = fields.Integer(required=True)
    name = fields.String(required=True)
    prefix = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    expires_at = fields.DateTime(required=True, allow_none=True)
    last_used_at = fields.DateTime(required=True, allow_none=True)
    revoked_at = fields.DateTime(required=True, allow_none=True)
    allowed_models = _models(required=True)


class NewApiKey(ApiKey):
    key = fields.String(required=True, metadata={"description": "the key itself, shown this once"})


class User(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    role = fields.String(required=True)
    active = fields.Boolean(required=True)
    capture = fields.Boolean(required=True)
    created_at = fields.DateTime(required=True)
    allowed_models = _models(required=True)


class KeyList(Schema):
    object = fields.String(required=True)
    data = fields.List(fields.Nested(ApiKey), required=True)
    has_more = fields.Boolean(required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class UserList(Schema):
    object = fields.String(required=True)
    data = fields.List(fields.Nested(User), required=True)
    has_more = fields.Boolean(required=True)
    next_cursor = fields.String(required=True, allow_none=True)
