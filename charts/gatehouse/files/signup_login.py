"""`helm test`: sign up a throwaway account and log in with it through the HTTP Service.

Usage: python signup_login.py BASE_URL. Exits 0 when both calls answer as the API promises,
1 with the reason otherwise. Standard library only: it runs in the HTTP tier's image.
"""

import json
import secrets
import sys
import urllib.error
import urllib.request


def post(url: str, body: dict[str, str]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def main(base_url: str) -> int:
    username = f"helm-test-{secrets.token_hex(6)}"
    password = secrets.token_urlsafe(24)
    status, body = post(f"{base_url}/api/v1/users", {"username": username, "password": password})
    if status != 201 or body.get("username") != username:
        print(f"sign-up failed: POST /api/v1/users answered {status} {body}", file=sys.stderr)
        return 1
    status, body = post(f"{base_url}/api/v1/sessions", {"username": username, "password": password})
    if status != 200 or not body.get("token"):
        print(f"login failed: POST /api/v1/sessions answered {status} {body}", file=sys.stderr)
        return 1
    print(f"signed up and logged in as {username} through {base_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
