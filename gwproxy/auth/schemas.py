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


class NewKey(_Strict):
    name = fields.String(load_default="", validate=validate.Length(max=128))
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


class UserChange(_Strict):
    role = fields.String(validate=validate.OneOf(["user", "admin"]))
    active = StrictBool()
    capture = StrictBool()
