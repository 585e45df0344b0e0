"""What every visitor touches besides the pages: the favicon, and the API docs page (its way back to the
app, and an OPTIONS request that is answered rather than a 500)."""

import pytest
from django.test import Client

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_favicon_is_served_and_named_by_the_pages(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response["Content-Type"] == "image/x-icon"
    body = b"".join(response.streaming_content)
    assert body[:4] == b"\x00\x00\x01\x00" and 1000 < len(body) < 20_000  # an ICO file, small
    assert "max-age=86400" in response["Cache-Control"]
    login = client.get("/accounts/login/").content.decode()
    assert '<link rel="icon" href="/favicon.ico"' in login
    docs = client.get("/api/docs/").content.decode()
    assert '<link rel="icon" href="/favicon.ico">' in docs


def test_the_api_docs_link_back_to_the_app(client):
    html = client.get("/api/docs/").content.decode()
    assert '<a href="/">Back to Ladder</a>' in html
    assert '<a href="/tokens/">API tokens</a>' in html


@pytest.mark.parametrize("signed_in", [False, True])
def test_options_on_the_api_docs_is_answered_for_anyone(signed_in):
    client = Client(raise_request_exception=False)
    if signed_in:
        client.force_login(UserFactory())
    response = client.options("/api/docs/")
    assert response.status_code == 200
    assert set(response["Allow"].replace(" ", "").split(",")) >= {"GET", "OPTIONS"}
    assert response.content == b""
    assert client.get("/api/docs/").status_code == 200
