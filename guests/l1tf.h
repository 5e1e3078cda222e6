/* What l1tf.c and l1tf.S share. */
#ifndef L1TF_H
#define L1TF_H

#define PROBE_STRIDE	4160		/* 4 KiB + one line: 256 values spread over all 64 sets, 4 per set */

#endif
