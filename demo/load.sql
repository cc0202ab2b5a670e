-- One visitor of the demo shop (a pgbench script: demo/load.sh runs it at the shop's
-- current rate, with the error and slow shares of the moment as -D variables).
SELECT shop.visit(:error_rate, :slow_rate);
