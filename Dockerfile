# One image for every process of the Procfile; docker-compose.yml picks the command.
# The web UI's npm packages (package-lock.json) are installed in a node stage and copied in.
FROM node:20-slim AS web-assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
COPY --from=web-assets /assets/node_modules ./node_modules
EXPOSE 8000
# The Procfile's web command (its WebSocket flags: 64 KiB messages, no compression).
CMD ["python", "-m", "uvicorn", "exchange.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--no-access-log", "--no-proxy-headers", "--ws", "websockets-sansio", "--ws-per-message-deflate", "false", "--ws-max-size", "65536"]
