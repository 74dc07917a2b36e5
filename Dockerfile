# A Comity node image: the CLI and its dependencies; the home lives in a volume.
FROM python:3.11-slim
WORKDIR /opt/comity
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY keys ./keys
COPY node ./node
COPY migrations ./migrations
RUN pip install --no-cache-dir -e .
ENV COMITY_HOME=/var/lib/comity COMITY_LOG_FORMAT=json
VOLUME ["/var/lib/comity"]
EXPOSE 8443 8700
ENTRYPOINT ["comity"]
CMD ["serve"]
