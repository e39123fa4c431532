// LZ4 (Debian's liblz4-dev): block and frame compression for archives and streams.
#include <lz4.h>
#include <lz4frame.h>
