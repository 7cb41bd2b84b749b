# The kvserver image: one statically linked binary and nothing else, so it builds on a machine
# that cannot pull base images. Build it with scripts/image.sh, which compiles the binary first
# and passes it in as the build context:
#
#   scripts/image.sh            # -> image kv:local
#   docker run --rm kv:local --help
#
# A node is configured by flags or by KV_* environment variables (see `kvserver node --help`);
# the cluster secret comes from KV_CLUSTER_SECRET or a mounted --cluster-secret-file.
FROM scratch
COPY kvserver /kvserver
# Not root: a nobody-like user that owns nothing in the image.
USER 65532:65532
EXPOSE 5100
# Alive and caught up: the same answer a load balancer or Kubernetes' readiness probe gets.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/kvserver", "health", "--node", "127.0.0.1:5100"]
ENTRYPOINT ["/kvserver"]
CMD ["--help"]
