# One image for web, worker and beat (see docker-compose.yml and Procfile).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TRAINYARD_ENV=production
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 trainyard
WORKDIR /app
COPY pyproject.toml ./
COPY pipeline ./pipeline
COPY nodes ./nodes
COPY radiators ./radiators
COPY templates ./templates
COPY static ./static
COPY examples ./examples
COPY manage.py ./
RUN pip install --no-cache-dir . \
 && SECRET_KEY=collectstatic-only-$(head -c 48 /dev/urandom | base64) python manage.py collectstatic --noinput
USER trainyard
ENV TRAINYARD_VAR_DIR=/home/trainyard/var
EXPOSE 8000
