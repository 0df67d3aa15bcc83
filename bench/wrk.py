"""Closed-loop peak throughput with wrk, run in consecutive segments for a time series.

wrk reports only whole-run statistics, so a scenario runs as back-to-back segments (1 s by
default), each a fresh `wrk -t1` pinned to one core. A Lua script cycles through raw requests
prepared by the harness (so every signup has its own name and every cold read its own
session), starting where the previous segment stopped, counts answers by status, and prints
its statistics as one JSON line. Given a marker path, the script creates that file when the
first answer arrives, so a harness can start other load once this one is under way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.latency import QUANTILE_GRID, Segment

WRK = "wrk"
_JSON_MARKER = "BENCH_JSON "
# Requests in the file are separated by NUL, which no HTTP request contains.
SEPARATOR = "\0"

_SCRIPT = r"""
local requests, count, cursor, marker = {}, 0, 0, nil
local threads = {}
-- Globals: read from each thread by done() through thread:get().
issued, statuses = 0, {}
local quantiles = {%(quantiles)s}

function setup(thread) table.insert(threads, thread) end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  for request in string.gmatch(data, "([^%%z]+)") do
    count = count + 1
    requests[count] = request
  end
  cursor = tonumber(args[2]) or 0
  if args[3] and args[3] ~= "" then marker = args[3] end
end

function request()
  local r = requests[(cursor %% count) + 1]
  cursor = cursor + 1
  issued = issued + 1
  return r
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if marker then
    assert(io.open(marker, "w")):close()
    marker = nil
  end
end

local function json_map(t)
  local parts = {}
  for k, v in pairs(t) do parts[#parts + 1] = string.format('"%%s": %%d', tostring(k), v) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local by_status, sent = {}, 0
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("statuses")) do by_status[k] = (by_status[k] or 0) + v end
    sent = sent + thread:get("issued")
  end
  local points = {}
  for _, q in ipairs(quantiles) do
    points[#points + 1] = string.format("[%%g, %%d]", q, latency:percentile(q))
  end
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests": %%d, "duration_us": %%d, "issued": %%d, "max_us": %%d, ' ..
    '"quantiles_us": [%%s], "statuses": %%s, "errors": {"connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d}}\n',
    summary.requests, summary.duration, sent, latency.max, table.concat(points, ", "),
    json_map(by_status), e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class WrkError(RuntimeError):
    """wrk is missing or failed; the message says what to do."""


@dataclass
class WrkRun:
    """Where a closed-loop run gets its requests and how hard it pushes."""

    url: str  # any URL on the target; the path comes from each raw request
    requests_file: Path
    connections: int
    cpu: int | None = None  # core to pin wrk to
    timeout_seconds: float = 10.0
    segments: list[Segment] = field(default_factory=list)
    cursor: int = 0  # index of the next request to send
    answered_marker: Path | None = None  # created by wrk at its first answer

    def run(self, seconds: int, segment_seconds: int = 1) -> list[Segment]:
        """Run for `seconds` in segments (wrk takes whole seconds); also kept on the object."""
        if shutil.which(WRK) is None:
            raise WrkError("wrk not found on PATH; run `make system-deps` (Debian package wrk)")
        script = self.requests_file.with_suffix(".lua")
        script.write_text(
            _SCRIPT
            % {"quantiles": ", ".join(f"{q:g}" for q in QUANTILE_GRID), "marker": _JSON_MARKER}
        )
        remaining = max(1, seconds)
        while remaining > 0:
            length = max(1, min(segment_seconds, remaining))
            segment = self._segment(script, length)
            self.segments.append(segment)
            remaining -= length
        return self.segments

    def _segment(self, script: Path, seconds: int) -> Segment:
        argv = [
            WRK, "-t1", f"-c{self.connections}", f"-d{seconds}s",
            f"--timeout={self.timeout_seconds:g}s", "-s", str(script), self.url,
            "--", str(self.requests_file), str(self.cursor), str(self.answered_marker or ""),
        ]  # fmt: skip
        if self.cpu is not None:
            argv = ["taskset", "-c", str(self.cpu), *argv]
        completed = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=seconds + self.timeout_seconds + 30,
        )
        line = next(
            (text for text in completed.stdout.splitlines() if text.startswith(_JSON_MARKER)), None
        )
        if completed.returncode != 0 or line is None:
            raise WrkError(
                f"wrk failed (exit {completed.returncode}) against {self.url}: "
                f"{completed.stderr.strip() or completed.stdout.strip()[-500:]}"
            )
        stats = json.loads(line.removeprefix(_JSON_MARKER))
        self.cursor += stats["issued"]
        errors = stats["errors"]
        statuses = {int(code): count for code, count in stats["statuses"].items()}
        # Socket errors other than timeouts: the connection broke under a request.
        broken = errors["connect"] + errors["read"] + errors["write"]
        return Segment(
            seconds=stats["duration_us"] / 1e6,
            count=stats["requests"],
            statuses=statuses,
            timeouts=errors["timeout"],
            connection_errors=broken,
            quantiles=[(q, us / 1e6) for q, us in stats["quantiles_us"]],
            max_latency=stats["max_us"] / 1e6,
        )


def write_requests(path: Path, requests: list[str]) -> Path:
    """Store raw requests for the Lua script (latin-1: HTTP heads are bytes)."""
    if any(SEPARATOR in request for request in requests):
        raise ValueError("a request contains NUL, which separates the requests in the file")
    path.write_bytes(SEPARATOR.join(requests).encode("latin-1"))
    return path
