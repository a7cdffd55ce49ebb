# The glasscockpit server + dashboard (no torch: agents run inside training jobs).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY glasscockpit ./glasscockpit
COPY protocol ./protocol
COPY diagnosis ./diagnosis
COPY agent ./agent
COPY server ./server
COPY dashboard ./dashboard
RUN pip install --no-cache-dir ".[server]"
RUN useradd --create-home glasscockpit
USER glasscockpit
EXPOSE 8050
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8050/healthz', timeout=2)"]
CMD ["glasscockpit", "serve", "--host", "0.0.0.0", "--port", "8050"]
