# The monitor worker. Same package and entry point as `make demo` / `.ci/run` use, on a slim image.
# The build context is what CI builds its wheel from (tests/integration/test_wheel_install.py reads
# the COPY lines below): the wheel carries the default rules, the Lua scripts and the templates.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY monitor ./monitor
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 aimon
USER aimon
WORKDIR /home/aimon
# Listen on all interfaces inside the container; the host decides what to publish.
ENV MONITOR_WEB_HOST=0.0.0.0 \
    MONITOR_WEB_PORT=6066 \
    MONITOR_EVIDENCE_DIR=/home/aimon/evidence
# Created here, owned by aimon, so that a named volume mounted on it starts writable by the worker.
RUN mkdir -p /home/aimon/evidence
VOLUME ["/home/aimon/evidence"]
# No MONITOR_RULES_PATH: the rules packaged with the monitor. The build fails if they do not load.
RUN monitor rules check >/dev/null
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:6066/healthz', timeout=2)" || exit 1
ENTRYPOINT ["monitor"]
CMD ["run"]
