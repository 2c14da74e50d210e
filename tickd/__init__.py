"""tickd records every Binance USD-M futures aggTrade tick into SQLite."""
