// The C API of RocksDB (Debian's librocksdb-dev). WarblerStorage is the only module that includes it.
#include <rocksdb/c.h>
