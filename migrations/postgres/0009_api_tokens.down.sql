DROP TABLE api_token;
